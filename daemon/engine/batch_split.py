"""Attention calls split along the batch, so a large clip stays within the GPU's launch limits.

A UNet family's temporal attention (I2VGen-XL, SVD) runs one short sequence per latent pixel: a
2560x1024 clip is 320x128 latent pixels, and with classifier-free guidance that is 81,920 sequences
in one call. CUDA's attention kernels put the batch on a grid axis limited to 65,535 blocks, so the
call fails with "CUDA error: invalid argument" (seen on an H200 with I2VGen-XL at 1024p and the
widest aspect ratio i2vd makes, a size ``[limits]`` allows). Attention never mixes two sequences of
a batch, so running such a call in parts of at most ``MAX_BATCH`` sequences gives the same result;
smaller calls go straight through.
"""

from __future__ import annotations

from typing import Any

# Half the grid limit: room for the kernels that also multiply the batch by a small factor.
MAX_BATCH = 32768


class BatchSplit:
    """Wraps an attention processor; calls it on slices of the batch when the batch is too large."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, attn: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        n = hidden_states.shape[0]
        if n <= MAX_BATCH:
            return self.inner(attn, hidden_states, *args, **kwargs)
        import torch

        def part(value: Any, sl: slice) -> Any:
            # Per-sequence tensors (encoder states, masks of this batch) are sliced alike; the rest
            # (None, shared tensors, flags) is passed as it is.
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                return value[sl]
            return value

        outs = []
        for start in range(0, n, MAX_BATCH):
            sl = slice(start, start + MAX_BATCH)
            outs.append(
                self.inner(
                    attn,
                    hidden_states[sl],
                    *(part(a, sl) for a in args),
                    **{k: part(v, sl) for k, v in kwargs.items()},
                )
            )
        return torch.cat(outs)


def split_large_batches(unet: Any) -> int:
    """Wrap every attention processor of ``unet`` in ``BatchSplit`` (once); returns how many."""
    processors = unet.attn_processors
    wrapped = {
        name: proc if isinstance(proc, BatchSplit) else BatchSplit(proc) for name, proc in processors.items()
    }
    unet.set_attn_processor(wrapped)
    return len(wrapped)
