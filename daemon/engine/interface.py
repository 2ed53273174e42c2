"""What the daemon needs from a model backend, and what it gets back; no torch here.

A backend (``Generator``) is described before any job by a ``ModelInfo``: enough for the
daemon to validate and size a job (the family's rules, the size multiple, a fixed size) on the
machine that holds the folders, whether the model runs in this process or on a worker elsewhere.
``generate`` turns a ``GenerationRequest`` into a ``GenerationResult``: the frames and the
record of what was really run, which goes into JOB.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from daemon.engine.families import end_frame_problem
from daemon.engine.family_spec import Family, StepCallback
from daemon.errors import GenerationError
from daemon.sizing import clip_size, fit_to, resolution_to_short_side


@dataclass(frozen=True)
class GenerationRequest:
    """One job's generation inputs, already validated and sized by the daemon."""

    # RGB: width x height, or (when it has fewer pixels than the clip) the job's picture as it
    # came, which the generator fits where it makes the frames (``first_frame``).
    image: Image.Image
    width: int
    height: int
    prompt: str
    negative_prompt: str
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int
    # LoRA adapters added for this job only, by configured name (the always-on ones are in the
    # weights already); the generator turns them off again after the job.
    loras: tuple[str, ...] = ()
    # The frame the clip ends on (``NAME.last.EXT``), RGB, sized like ``image``: fitted to the clip
    # unless smaller, then fitted where the frames are made (``last_frame``); None for most jobs.
    last_image: Image.Image | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The frames (uint8, shaped (frames, height, width, 3)) and what was really run.

    ``record`` is the ``generation`` part of JOB.json: the clip size, frames and offload finally
    used (running out of memory walks down ``model.oom_ladder``), the engine settings in force,
    whether the prompt was used and every attempt made.
    """

    frames: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)
    # Where it was made ({"name", "host", "device"}), filled in by the executor that ran it.
    worker: dict[str, str] | None = None
    # The finished files (a ``daemon.job.encoded.EncodedFiles``) when the worker that generated
    # the clip also encoded it; ``frames`` is then a zero-copy stand-in of the right shape.
    encoded: Any = None


@dataclass(frozen=True)
class ModelInfo:
    """What is known of a loaded model without running it: enough to check and size a job."""

    model_id: str
    revision: str | None
    device: str
    family: Family
    size_multiple: int  # width and height must be multiples of this
    fixed_size: tuple[int, int] | None = None  # a model that makes one size only (CogVideoX 1.0)

    def clip_size(self, image_width: int, image_height: int, resolution: str) -> tuple[int, int]:
        """The one place a job's clip size is decided: the model's only size, or the image's aspect
        ratio at ``resolution`` (its shorter side) rounded to the model's multiple."""
        if self.fixed_size is not None:
            return self.fixed_size
        return clip_size(
            image_width,
            image_height,
            short_side=resolution_to_short_side(resolution),
            multiple=self.size_multiple,
        )

    def check(self, req: GenerationRequest) -> None:
        """Everything this model cannot take, as a GenerationError, before any model work."""
        if self.fixed_size is not None and (req.width, req.height) != self.fixed_size:
            w, h = self.fixed_size
            raise GenerationError(
                f"The clip size {req.width}x{req.height} does not suit this {self.family.label} model: it"
                f" makes {w}x{h} clips only."
            )
        self.family.check(req, self.size_multiple)
        problem = end_frame_problem(self.family, req.last_image is not None)
        if problem is not None:
            raise GenerationError(problem)


@runtime_checkable
class Generator(Protocol):
    """What the daemon needs from a model backend: one ``generate`` at a time, the model kept warm."""

    info: ModelInfo
    engine: dict[str, Any]  # the speed and memory settings in force (for ``i2vd check``, JOB.json)

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """The frames for ``req``.

        ``on_step(done, total)`` is called after each denoising step with done = 1..total; an
        exception it raises stops generation and propagates unchanged (how a job is aborted).
        Raises ``GenerationError`` when this job cannot be generated.
        """
        ...

    def warm_up(self, *, short_side: int, num_frames: int) -> float:
        """One small generation now, so the first job is not the slow one; returns its seconds."""
        ...

    def close(self) -> None:
        """Let go of the model (GPU memory); the generator is not used again."""
        ...


def first_frame(req: GenerationRequest, size: tuple[int, int] | None = None) -> Image.Image:
    """The picture the clip starts from at ``size`` (the request's own by default): the request's
    image, centre-cropped and resized (``fit_to``) unless it is that size already."""
    return _fitted(req.image, size or (req.width, req.height))


def last_frame(req: GenerationRequest, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The picture the clip ends on at ``size``, cropped and resized as ``first_frame``; None without one."""
    return None if req.last_image is None else _fitted(req.last_image, size or (req.width, req.height))


def _fitted(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else fit_to(image, *size)
