"""The stand-in generator: no model work, for tests, demos and benchmarks of everything around it."""

from __future__ import annotations

import math
import time

import numpy as np

from daemon.engine.family_spec import Family
from daemon.engine.interface import (
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    StepCallback,
    first_frame,
)

STUB_ID = "stub"

# The stand-in's rules: any frame count, sizes in multiples of 8, like the least of the real models.
_STUB_FAMILY = Family("stub", "", "the stand-in generator", denoiser="", size_multiple=8)


class StubGenerator:
    """A stand-in that does no model work, for tests and benchmarks of everything around the model.

    It takes ``seconds`` in total, like a GPU that needs that long (the frames are made first and
    the rest is slept, spread over the steps so an abort between steps is as prompt as with a real
    model), and returns frames derived only from the image and seed: the image under a brightness
    ramp that moves across it from frame to frame.
    """

    info = ModelInfo(STUB_ID, None, "cpu", _STUB_FAMILY, _STUB_FAMILY.size_multiple)

    def __init__(self, seconds: float = 0.0) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"stub seconds must be a number >= 0, not {seconds}")
        self.seconds = seconds
        self.engine: dict[str, object] = {}

    def warm_up(self, **_: object) -> float:
        """Nothing to warm up."""
        return 0.0

    def close(self) -> None:
        """Nothing to let go of."""

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        self.info.check(req)
        deadline = time.monotonic() + self.seconds
        base = np.asarray(first_frame(req).convert("RGB"), dtype=np.float32)
        phase = np.random.default_rng(req.seed).random()  # the seed shifts where the ramp starts
        x = np.arange(req.width, dtype=np.float32) / req.width
        frames = np.empty((req.num_frames, req.height, req.width, 3), dtype=np.uint8)
        for f in range(req.num_frames):
            ramp = 0.6 + 0.4 * np.sin(2 * np.pi * (x - f / req.num_frames + phase))  # in [0.2, 1.0]
            frames[f] = np.clip(base * ramp[None, :, None], 0, 255).round().astype(np.uint8)
        for done in range(1, req.steps + 1):
            if self.seconds:
                # What is left of the stand-in GPU time, shared among the remaining steps.
                time.sleep(max(0.0, deadline - time.monotonic()) / (req.steps - done + 1))
            if on_step is not None:
                on_step(done, req.steps)
        record = {
            "ok": True,
            "family": "stub",
            "width": req.width,
            "height": req.height,
            "num_frames": req.num_frames,
        }
        return GenerationResult(frames, record)
