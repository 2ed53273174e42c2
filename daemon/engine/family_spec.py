"""What a model family is: the ``Family`` record and the checks and pipeline call every family shares.

The families themselves (I2VGen-XL, SVD, LTX-Video, Wan, ...) are entries in
``daemon.engine.families.FAMILIES``; what one of them does differently from the rest is a field here,
or a hook (a function the entry names), never a branch on its name in shared code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.errors import GenerationError

StepCallback = Callable[[int, int], None]
# (request, loaded pipeline or None, frame count) -> the call arguments this family adds or replaces.
KwargsHook = Callable[[Any, Any, int], dict[str, Any]]
# loaded pipeline -> a number (the width/height multiple) or a fixed (width, height).
PipeHook = Callable[[Any], Any]


def _frames_message(label: str, value: int, step: int, example: int) -> str:
    ok = ", ".join(str(step * k + 1) for k in range(1, 5))
    return (
        f"num_frames = {value} does not suit {label}: it makes clips of {step}k+1 frames"
        f" ({ok}, ..., e.g. {example}). Pick one of those."
    )


@dataclass(frozen=True)
class Family:
    """What differs between model families (see ``daemon.engine.families``)."""

    name: str
    pipeline_class: str  # a diffusers class name, or "module:Class" for our subclass of one
    label: str
    # The ``_class_name`` values of a model_index.json that name this family (its detection; the Wan
    # generations share theirs and are told apart by ``detect.wan_generation``).
    index_names: tuple[str, ...] = ()
    denoiser: str = "transformer"  # the pipeline attribute that runs every step
    takes_prompt: bool = True
    size_multiple: int = 8  # least: the loaded pipeline's own multiple may be larger
    frame_step: int = 1  # num_frames must be frame_step*k + 1 (1: any count)
    typical_frames: int = 16
    # The precision the weights are published in, taken on a GPU when model.dtype = "auto". Float16
    # overflows in the big transformers trained in bfloat16 (NaN frames); the UNets were made in float16.
    gpu_dtype: str = "bfloat16"
    chunked_decode: bool = False  # the pipeline takes decode_chunk_size (frames decoded at once)
    float32_parts: tuple[str, ...] = ()  # components kept in float32 on a GPU with model.dtype "auto"
    # The pipeline attribute that takes the per-step callback, for a pipeline that has no
    # callback_on_step_end (I2VGen-XL: our subclass reports through its progress bar).
    step_hook: str | None = None
    # The steps and guidance the model's authors publish (or diffusers' pipeline defaults for it):
    # what a job gets when neither its prompt file, an adapter nor [generation] sets them. Each
    # entry in FAMILIES says where its numbers come from.
    default_steps: int = 50
    default_guidance: float = 5.0
    # diffusers can load LoRA adapters into this family's pipeline (it has a LoRA loader mixin).
    takes_lora: bool = False
    # The pipeline attributes that are denoisers (Wan 2.2 A14B: two experts); all are quantized,
    # compiled and given adapters alike.
    denoisers: tuple[str, ...] = ()
    # The diffusers caching methods ([model] cache) that work on this family's denoiser; None: all.
    cache_methods: tuple[str, ...] | None = None
    # Hooks, each given the loaded pipeline: what this family's call adds (fps, guidance in its own
    # form...), the width/height multiple its VAE and denoiser need, and the one size a model that can
    # make only one takes (None for any).
    extra_kwargs: KwargsHook | None = None
    multiple_of: PipeHook | None = None
    one_size: PipeHook | None = None
    # How its pipeline takes a chosen last frame (``NAME.last.EXT``): the call argument that takes
    # it ("last_image": Wan; "conditions": LTX-Video, first and last frame as conditions of
    # ``end_frame_pipeline``, built on the loaded pipeline's components), or None when it cannot
    # (such jobs fail before any model work, naming the families that can:
    # ``daemon.engine.families.end_frame_problem``).
    end_frame: str | None = None
    end_frame_pipeline: str | None = None
    # (first image, last image, frame count) -> the call arguments that put both frames in.
    end_frame_kwargs: Callable[[Any, Any, int], dict[str, Any]] | None = None
    # A model trained on first-last-frame pairs only (Wan 2.1 FLF2V): every job must bring a last frame.
    needs_end_frame: bool = False

    @property
    def all_denoisers(self) -> tuple[str, ...]:
        return self.denoisers or (self.denoiser,)

    @property
    def uses_unet(self) -> bool:
        return self.denoiser == "unet"

    def frames_ok(self, n: int) -> bool:
        return n >= 1 and (self.frame_step == 1 or (n - 1) % self.frame_step == 0)

    def fit_frames(self, n: int, *, at_least: int = 1) -> int:
        """The largest frame count this family takes that is <= ``n``; if that is under ``at_least``,
        the smallest one >= ``at_least`` instead (which may exceed ``n``)."""
        step = self.frame_step
        below = ((max(n, 1) - 1) // step) * step + 1
        if below >= at_least:
            return below
        return ((max(at_least, 1) - 1 + step - 1) // step) * step + 1

    def check(self, req: Any, size_multiple: int | None = None) -> None:
        """Reject what this family cannot take, before any model work (GenerationError)."""
        mult = size_multiple or self.size_multiple
        for key, value in (("width", req.width), ("height", req.height)):
            if value <= 0 or value % mult:
                raise GenerationError(
                    f"The clip {key} {value} does not suit {self.label}: width and height must be positive"
                    f" multiples of {mult} (pick another resolution, or an image whose aspect ratio gives"
                    " such sizes)."
                )
        if not self.frames_ok(req.num_frames):
            if self.frame_step > 1:
                msg = _frames_message(self.label, req.num_frames, self.frame_step, self.typical_frames)
            else:
                msg = f"num_frames = {req.num_frames} does not suit {self.label}: use 1 or more."
            raise GenerationError(msg)
        if req.steps < 1:
            raise GenerationError(f"steps = {req.steps} does not suit {self.label}: use 1 or more.")
        if req.fps < 1:
            raise GenerationError(f"fps = {req.fps} does not suit {self.label}: use 1 or more.")
        if not np.isfinite(req.guidance_scale) or req.guidance_scale < 0:
            raise GenerationError(
                f"guidance_scale = {req.guidance_scale} does not suit {self.label}:"
                " use a number of 0 or more."
            )
        if not 0 <= req.seed < 2**64:  # what torch's generators accept
            raise GenerationError(
                f"seed = {req.seed} is out of range: use a whole number from 0 to {2**64 - 1}."
            )

    def call_kwargs(
        self,
        req: Any,
        *,
        image: Any,
        width: int,
        height: int,
        num_frames: int,
        generator: Any,
        decode_chunk_size: int,
        on_step: StepCallback | None,
        pipe: Any = None,
        last_image: Any = None,
    ) -> dict[str, Any]:
        """The pipeline call for ``req`` at this size (frames come back as numpy floats in [0, 1]).

        ``pipe``: the loaded pipeline, for a family whose checkpoints differ in how they are called
        (HunyuanVideo-I2V's two). The family's ``extra_kwargs`` hook adds what only it takes.
        ``last_image``: the frame the clip ends on, at this size, passed as ``end_frame`` names.

        Progress: every pipeline but I2VGen-XL's takes ``callback_on_step_end``; I2VGen-XL reports
        through ``DaemonI2VGenXLPipeline.step_callback``, which the engine sets.
        """
        kwargs: dict[str, Any] = dict(
            image=image,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=req.steps,
            generator=generator,
            output_type="np",
        )
        if self.chunked_decode:
            kwargs["decode_chunk_size"] = max(1, min(decode_chunk_size, num_frames))
        if self.step_hook is None and on_step is not None:
            total = req.steps

            def callback(_pipe: Any, step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
                on_step(step + 1, total)
                return {}

            kwargs["callback_on_step_end"] = callback
        if self.takes_prompt:
            kwargs.update(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt or None,
                guidance_scale=req.guidance_scale,
            )
        if self.extra_kwargs is not None:
            kwargs.update(self.extra_kwargs(req, pipe, num_frames))
        if last_image is not None and self.end_frame_kwargs is not None:
            kwargs.update(self.end_frame_kwargs(image, last_image, num_frames))
        elif last_image is not None and self.end_frame is not None:
            kwargs[self.end_frame] = last_image
        return kwargs
