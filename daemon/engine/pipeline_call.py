"""One try of a job at one setting: the pipeline called with everything set up around it, and undone after.

The ladder (``daemon.engine.ladder_walk``) chooses the setting; ``PipelineCall`` makes the try:
the image fitted to that size, the weights placed for its offload, the test-only out-of-memory
injector attached, the step callback hooked, this job's adapters on and every other one off, the
attention kernels and compile stance, the seeds, the decode rescue. Everything it changes on the
pipeline is undone before it returns, so nothing of one job reaches the next, and the frames
that come back are checked. Loading and holding the model is ``daemon.engine.runner``'s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.engine.adapters import Adapters
from daemon.engine.families import Family, end_frame_pipe
from daemon.engine.interface import GenerationRequest, StepCallback, first_frame, last_frame
from daemon.engine.oom import InjectOOM, Setting, rescued_decode
from daemon.engine.options import Placement, reset_cache
from daemon.errors import GenerationError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PipelineCall:
    """What every try on one loaded pipeline shares: its family, device, placement, adapters and kernels."""

    family: Family
    device: torch.device
    placement: Placement
    adapters: Adapters
    sdpa: list[Any] | None  # SDPA kernels in priority order; None: PyTorch's own choice
    decode_chunk_size: int
    log: Any

    def __call__(
        self,
        pipe: Any,
        req: GenerationRequest,
        setting: Setting,
        on_step: StepCallback | None,
        record: dict[str, Any],
        *,
        eager_on_recompile: bool,
        inject_oom: InjectOOM | None,
    ) -> np.ndarray:
        """One try at ``setting``: frames as floats in [0, 1]; out-of-memory errors propagate.

        ``record`` gets what the try really used (adapters, decode chunk, tiling, the stage it
        reached). ``eager_on_recompile``: a shape torch.compile has not seen runs eagerly.
        """
        import torch

        device, family = self.device, self.family
        size = (setting.width, setting.height)
        # A smaller rung: the same picture, centre-cropped to the new aspect ratio and resized
        # (never stretched).
        image = first_frame(req, size)
        last = last_frame(req, size)  # the chosen last frame, cropped and resized as the first
        self.placement.place(setting.offload)
        pixels = setting.width * setting.height * setting.num_frames
        detach = inject_oom.attach(pipe, family.denoiser, pixels) if inject_oom else None
        if family.step_hook is not None:
            setattr(pipe, family.step_hook, on_step)
        reset_cache(pipe, family)
        try:
            # This job's adapters on, every other one off; off again in the finally below, so they
            # can never reach the next job.
            record["loras"] = [*self.adapters.fused, *self.adapters.activate(req.loras)]
            with contextlib.ExitStack() as stack:
                if self.sdpa is not None:
                    from torch.nn.attention import sdpa_kernel

                    stack.enter_context(sdpa_kernel(self.sdpa, set_priority=True))
                if eager_on_recompile:
                    # A smaller rung is a new shape: run it eagerly rather than compile it for one job.
                    stack.enter_context(torch.compiler.set_stance("eager_on_recompile"))
                # Pipelines sample some noise (I2VGen-XL's image latent, for one) from the global RNG,
                # not from `generator`: seed that too, inside fork_rng so the caller's global state is
                # left as it was. Together: the same request gives the same frames.
                cuda_devices = [device.index or 0] if device.type == "cuda" else []
                stack.enter_context(torch.random.fork_rng(devices=cuda_devices))
                torch.manual_seed(req.seed)
                generator = torch.Generator(device=device).manual_seed(req.seed)
                record["stage"] = "denoise"
                rescue = stack.enter_context(
                    rescued_decode(
                        pipe.vae, device=device, log=self.log, on_first=lambda: record.update(stage="decode")
                    )
                )
                chunk = self.decode_chunk_size
                target = end_frame_pipe(family, pipe) if last is not None else pipe
                out = target(
                    **family.call_kwargs(
                        req,
                        image=image.convert("RGB"),
                        width=setting.width,
                        height=setting.height,
                        num_frames=setting.num_frames,
                        generator=generator,
                        decode_chunk_size=chunk,
                        on_step=on_step,
                        pipe=pipe,
                        last_image=last.convert("RGB") if last is not None else None,
                    )
                )
                if family.chunked_decode:
                    chunk = min(chunk, setting.num_frames, rescue.limit or chunk)
                    record["decode_chunk_size"] = chunk
                record["vae_tiling"] = bool(getattr(pipe.vae, "use_tiling", False))
        finally:
            self.adapters.deactivate()
            if family.step_hook is not None:
                setattr(pipe, family.step_hook, None)
            if detach is not None:
                detach()
        video = np.asarray(out.frames[0], dtype=np.float32)
        if not np.isfinite(video).all():
            raise GenerationError(
                "The model produced invalid pixels (not-a-number). This usually means float16 overflowed:"
                " ask the operator to set model.dtype to bfloat16 or float32."
            )
        expected = (setting.num_frames, setting.height, setting.width, 3)
        if video.shape != expected:
            raise GenerationError(
                f"The model returned frames shaped {video.shape}, expected {expected}; this is a bug in"
                " i2vd, please report it."
            )
        return video
