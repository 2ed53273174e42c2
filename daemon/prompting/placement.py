"""Where the prompt model lives, so that it never costs the video model its memory.

Decided once, at load, from the free memory measured on the GPU after the video model is loaded:

- ``gpu``: the prompt model's weights and ``gpu_reserve_mb`` (what the video model needs besides
  its weights while it generates) both fit: it stays there, each prompt costs only its tokens;
- ``offload``: its weights fit while the video model is idle but not beside a generation: it is
  kept on the CPU and moved to the GPU only to write (prompts are written between generations,
  on the loop's thread, so the two never hold the GPU at once);
- ``cpu``: not even that fits, or there is no GPU: it runs on the CPU, slower, with no GPU cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Where = Literal["gpu", "offload", "cpu"]

# Over the weights, while it writes: the KV cache of one prompt (~60 MB for the 2B model at ~570
# tokens, benchmarks/bench_prompting.py), the vision tower's activations for a 512x512 image and
# the allocator's slack. 1 GB covers them with room.
WORKING_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Placement:
    where: Where
    reason: str


def place(weight_bytes: int, free_bytes: int | None, reserve_bytes: int) -> Placement:
    """Where a model of ``weight_bytes`` goes with ``free_bytes`` free on the GPU (None: no GPU)."""
    mb = 1024 * 1024
    if free_bytes is None:
        return Placement("cpu", "no GPU")
    need = weight_bytes + WORKING_BYTES
    if free_bytes >= need + reserve_bytes:
        return Placement(
            "gpu",
            f"{free_bytes // mb} MB free holds it ({need // mb} MB)"
            f" and the reserve ({reserve_bytes // mb} MB)",
        )
    if free_bytes >= need:
        return Placement(
            "offload",
            f"{free_bytes // mb} MB free holds it ({need // mb} MB) but not beside the reserve"
            f" ({reserve_bytes // mb} MB): moved to the GPU only to write",
        )
    return Placement("cpu", f"{free_bytes // mb} MB free on the GPU, it needs {need // mb} MB")
