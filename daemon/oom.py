"""Out of memory: recognise it, free what can be freed, and plan the next, smaller try.

When the GPU runs out of memory in the middle of a job, ``DiffusersGenerator.generate`` does not
fail the job at once. It frees memory and walks down the configured ladder
(``model.oom_ladder``), one rung at a time, each rung as often as it still applies:

- ``lower_resolution``: the next smaller short side of ``model.oom_resolutions`` (by default
  1024 -> 768 -> 640 -> 512 -> 384); the long side keeps the clip's aspect ratio and the model's
  size multiple, and the image is centre-cropped to the new size again (never stretched);
- ``fewer_frames``: half the frames, down to ``model.oom_min_frames``;
- ``cpu_offload``: keep only the running part of the model on the GPU (``model`` offload; CUDA
  only, slower, and a no-op rung when offload is already on).

Only when no rung applies any more does the job fail, with an ``error.txt`` that says which
settings to lower. Whatever finally worked is recorded in the job's JOB.json (``generation``).

Out-of-memory in the VAE decode (after all denoising steps) is cheaper to rescue and is handled
before this ladder: the decode is repeated in smaller chunks (see ``DiffusersGenerator``).

A GPU's out-of-memory error cannot be provoked on a CPU-only machine, so this module also ships
the fault injector the tests use: ``InjectOOM`` (or the ``I2VD_INJECT_OOM`` environment variable)
raises a genuine ``torch.OutOfMemoryError`` from inside the real pipeline when a clip is larger than a
threshold. It is never active unless a test (or an operator rehearsing failures) turns it on.

torch is imported lazily here, like everywhere outside ``DiffusersGenerator``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .images import clip_size

LOWER_RESOLUTION = "lower_resolution"
FEWER_FRAMES = "fewer_frames"
CPU_OFFLOAD = "cpu_offload"
RUNGS = (LOWER_RESOLUTION, FEWER_FRAMES, CPU_OFFLOAD)

DEFAULT_LADDER = (LOWER_RESOLUTION, FEWER_FRAMES, CPU_OFFLOAD)
# Short sides the ladder may fall back to (only those below the job's own are ever used).
DEFAULT_SHORT_SIDES = (768, 640, 512, 384)
DEFAULT_MIN_FRAMES = 8

ENV_VAR = "I2VD_INJECT_OOM"

# The texts PyTorch and the C library use for an allocation that failed.
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's ``torch.OutOfMemoryError`` and for a RuntimeError that says it ran out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)


def free_memory(device: Any) -> None:
    """Collect garbage and give the CUDA allocator's cached blocks back, so the next try starts clean.

    Call it *after* leaving the ``except`` block: the exception's traceback keeps the failed try's
    tensors alive until then.
    """
    gc.collect()
    import torch

    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class Setting:
    """What one try generates: the clip's size and length, and where the model's weights live."""

    width: int
    height: int
    num_frames: int
    offload: str  # "none" | "model" | "sequential"

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def describe(self) -> str:
        text = f"{self.width}x{self.height} with {self.num_frames} frames"
        return text + (f" ({self.offload} offload)" if self.offload != "none" else "")


@dataclass(frozen=True)
class Ladder:
    """The configured way down: rungs in order, the fall-back short sides and the fewest frames."""

    rungs: tuple[str, ...] = DEFAULT_LADDER
    short_sides: tuple[int, ...] = DEFAULT_SHORT_SIDES
    min_frames: int = DEFAULT_MIN_FRAMES

    def __post_init__(self) -> None:
        unknown = [r for r in self.rungs if r not in RUNGS]
        if unknown:
            raise ValueError(f"unknown oom_ladder step(s) {unknown}; known: {', '.join(RUNGS)}")
        if any(s < 1 for s in self.short_sides) or self.min_frames < 1:
            raise ValueError("oom short sides and min_frames must be at least 1")

    def next(
        self, current: Setting, *, requested: Setting, multiple: int, can_offload: bool
    ) -> tuple[str, Setting] | None:
        """The first rung that still makes ``current`` smaller, and the setting it gives; None at the bottom.

        Smaller sizes keep the aspect ratio of the ``requested`` clip and are multiples of ``multiple``.
        """
        for rung in self.rungs:
            nxt = self._apply(rung, current, requested, multiple=multiple, can_offload=can_offload)
            if nxt is not None:
                return rung, nxt
        return None

    def _apply(
        self, rung: str, cur: Setting, req: Setting, *, multiple: int, can_offload: bool
    ) -> Setting | None:
        if rung == LOWER_RESOLUTION:
            for short in sorted(self.short_sides, reverse=True):
                width, height = clip_size(req.width, req.height, short_side=short, multiple=multiple)
                if min(width, height) < cur.short_side:
                    return replace(cur, width=width, height=height)
            return None
        if rung == FEWER_FRAMES:
            frames = max(self.min_frames, cur.num_frames // 2)
            return replace(cur, num_frames=frames) if frames < cur.num_frames else None
        if rung == CPU_OFFLOAD:
            return replace(cur, offload="model") if can_offload and cur.offload == "none" else None
        raise AssertionError(rung)  # __post_init__ rejects unknown rungs


def exhausted_message(tried: Sequence[Setting], *, on_gpu: bool, requested: Setting) -> str:
    """error.txt for a job that ran out of memory at every rung: what was tried and what to lower."""
    where = "The GPU" if on_gpu else "The computer"
    sizes = "; ".join(s.describe() for s in tried)
    smallest = tried[-1] if tried else requested
    advice = []
    if requested.short_side > 512:
        advice.append('a lower resolution (resolution = "512p" in the prompt file)')
    if requested.num_frames > 2:
        advice.append(f"fewer frames (for example num_frames = {max(2, smallest.num_frames // 2)})")
    fix = (
        f"Ask for {' and '.join(advice)}, then put the image and its prompt file in the inbox again."
        if advice
        else "This clip is already as small as i2vd makes them."
    )
    operator = (
        'ask the operator to close other programs using the GPU, or to set model.offload = "model" in'
        " the daemon's config."
        if on_gpu
        else "ask the operator to close other programs or to add memory."
    )
    return (
        f"{where} ran out of memory making this clip, even after trying smaller settings "
        f"(tried: {sizes}). {fix} If small clips fail too, the machine is short of memory: {operator}"
    )


class InjectOOM:
    """Fault injector for tests: raise a real ``torch.OutOfMemoryError`` from inside the pipeline.

    - ``above``: the UNet raises when the clip it is given has more than this many
      ``width * height * frames`` (measured from the latents it receives, so it sees exactly what
      the pipeline runs, rung by rung);
    - ``decode_above``: the VAE decoder raises when asked to decode more than this many frames in one
      call (to rehearse the chunked decode rescue).

    ``attach(pipe)`` installs it on a pipeline and returns a function that removes it. Set it on a
    generator as ``generator.inject_oom = InjectOOM(above=...)``, or for a whole daemon process with
    the environment variable ``I2VD_INJECT_OOM="above=N,decode_above=M"`` (either part optional).
    Never set it in production: it makes jobs that would fit behave as if they did not.
    """

    def __init__(self, above: int | None = None, decode_above: int | None = None) -> None:
        if above is None and decode_above is None:
            raise ValueError("InjectOOM needs above=, decode_above= or both")
        self.above = above
        self.decode_above = decode_above
        self.raised = 0  # how many errors it raised: tests check the ladder really ran

    def __repr__(self) -> str:
        return f"InjectOOM(above={self.above}, decode_above={self.decode_above})"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> InjectOOM | None:
        """The injector ``I2VD_INJECT_OOM`` asks for, or None when it is unset or empty."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        if not raw:
            return None
        values: dict[str, int] = {}
        for part in raw.split(","):
            key, eq, number = part.strip().partition("=")
            if not eq and key.isdigit():  # a bare number means above=N
                key, number = "above", key
            if key not in ("above", "decode_above") or not number.strip().isdigit():
                raise ValueError(
                    f"{ENV_VAR}={raw!r}: write it as 'above=PIXELS_TIMES_FRAMES' and/or"
                    " 'decode_above=FRAMES', for example 'above=4000000,decode_above=4'"
                )
            values[key] = int(number)
        return cls(**values)

    def attach(self, pipe: Any) -> Callable[[], None]:
        """Install on ``pipe`` (its UNet and VAE decoder); returns the function that removes it again."""
        import torch

        scale = int(pipe.vae_scale_factor)
        handles = []

        def unet_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs["sample"]
            _, _, frames, h, w = sample.shape
            if self.above is not None and frames * h * scale * w * scale > self.above:
                self._raise(torch, f"{w * scale}x{h * scale}, {frames} frames")

        def decode_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            z = args[0] if args else kwargs["z"]
            if self.decode_above is not None and z.shape[0] > self.decode_above:
                self._raise(torch, f"decoding {z.shape[0]} frames at once")

        handles.append(pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True))
        handles.append(pipe.vae.decoder.register_forward_pre_hook(decode_hook, with_kwargs=True))

        def detach() -> None:
            for handle in handles:
                handle.remove()

        return detach

    def _raise(self, torch: Any, what: str) -> None:
        self.raised += 1
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB ({what}; simulated by i2vd's InjectOOM)"
        )


def parse_short_sides(values: Iterable[str | int]) -> tuple[int, ...]:
    """``["768p", "512p"]`` (or plain integers) -> ``(768, 512)``."""
    out = []
    for v in values:
        text = str(v).strip().lower().removesuffix("p")
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{v!r} is not a resolution like '512p'")
        out.append(int(text))
    return tuple(out)
