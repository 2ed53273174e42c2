"""The diffusers engine: any image-to-video family, loaded once and kept warm.

``DiffusersGenerator`` runs any model family of ``daemon.engine.families``: it loads the
pipeline, applies the ``[model]`` speed and memory options once at load
(``daemon.engine.options``; CUDA-only ones are ignored with a log line on a CPU), and holds it.
Each ``generate`` walks down the out-of-memory ladder (``daemon.engine.ladder_walk``), one try
at a time (``daemon.engine.pipeline_call``), and returns with the frames a record of what it
really ran. ``warm_up()`` runs one small generation so the first job is not the slow one.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from daemon import logs
from daemon.engine.adapters import Adapters
from daemon.engine.detect import family_of_pipeline
from daemon.engine.families import (
    Family,
    fixed_size,
    ftfy_fallback,
    get_family,
    pipeline_class,
    pipeline_multiple,
)
from daemon.engine.interface import GenerationRequest, GenerationResult, ModelInfo, StepCallback
from daemon.engine.ladder_walk import LadderWalk
from daemon.engine.load import (
    component_dtypes,
    from_pretrained_variant,
    locate,
    model_kind,
    resolve_device,
    resolve_dtype,
    weights_variant,
)
from daemon.engine.oom import ENV_VAR as OOM_ENV_VAR
from daemon.engine.oom import LOWER_RESOLUTION, InjectOOM, Setting, first_line, free_memory
from daemon.engine.options import EngineOptions, Placement, apply_options, uncompile
from daemon.engine.pipeline_call import PipelineCall
from daemon.errors import GenerationError

if TYPE_CHECKING:
    import torch


class DiffusersGenerator:
    """An image-to-video pipeline of any family, loaded once and kept warm; one ``generate`` at a time.

    Every family (``daemon.engine.families``) gets the same engine: the ``[model]`` speed and
    memory options (``daemon.engine.options``), the out-of-memory ladder and decode rescue
    (``daemon.engine.oom``), the warm-up, per-step progress and seeding. Each ``generate`` returns
    with the frames a record of what was really run: the clip size, frames and offload finally
    used, the engine settings in force, whether the prompt was used and every attempt the ladder
    made (also kept in ``last_run``, failed runs included).
    ``inject_oom`` holds the test-only fault injector.
    """

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path,
        options: EngineOptions | None = None,
        family: str = "auto",
    ) -> None:
        from daemon.logs import adopt_model_libraries

        # A service logs to journald: loading progress bars and library notices are noise there.
        adopt_model_libraries()
        torch_device = resolve_device(device)
        source, revision, family_name, kwargs = locate(model_id, family, revision, Path(cache_dir))
        # torch.compile's kernels kept beside the weights, not in /tmp (a service's private /tmp is
        # gone at each restart): a restart then loads them in seconds instead of compiling again.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "torch-compile"))
        fam = get_family(family_name)
        torch_dtype = resolve_dtype(dtype, torch_device, fam)
        cls = pipeline_class(fam)
        ftfy_fallback(cls)
        variant = None if model_kind(model_id) == "tiny" else weights_variant(torch_dtype)
        kwargs["dtype"] = component_dtypes(fam, torch_dtype, dtype, torch_device)
        try:
            pipe = from_pretrained_variant(cls, source, variant, kwargs)
        except Exception as exc:
            hint = " If it is not downloaded yet, run `i2vd fetch-model`." if source == model_id else ""
            raise RuntimeError(f"Could not load model {model_id!r} (from {source}): {exc}{hint}") from exc
        self._setup(pipe, fam, model_id, revision, torch_device, options, Path(cache_dir))

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        *,
        model_id: str = "custom",
        revision: str | None = None,
        device: str = "auto",
        options: EngineOptions | None = None,
        cache_dir: Path | None = None,
    ) -> DiffusersGenerator:
        """Wrap a pipeline built in memory (benchmarks); it shares ``pipe``'s modules.

        ``cache_dir``: where Hub adapters are cached (None: the Hugging Face default cache)."""
        fam = family_of_pipeline(pipe)
        cls_ = pipeline_class(fam)  # I2VGen-XL: our repaired subclass, sharing the same modules
        if not isinstance(pipe, cls_):
            pipe = cls_(**pipe.components)
        self = cls.__new__(cls)
        self._setup(pipe, fam, model_id, revision, resolve_device(device), options, cache_dir)
        return self

    def _setup(
        self,
        pipe: Any,
        family: Family,
        model_id: str,
        revision: str | None,
        device: torch.device,
        options: EngineOptions | None,
        cache_dir: Path | None = None,
    ) -> None:
        self.family = family
        self.model_id = model_id
        self.revision = revision
        self._torch_device = device
        self.device = str(device)
        self.options = options or EngineOptions()
        self._log = logs.get()
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        self._lock = threading.Lock()
        self.size_multiple = pipeline_multiple(family, pipe)
        # A model that makes one clip size only (CogVideoX 1.0): the daemon sizes every job to it.
        self.fixed_size = fixed_size(family, pipe)
        self.info = ModelInfo(model_id, revision, self.device, family, self.size_multiple, self.fixed_size)
        # The record of the last generate, also when it failed (the ladder's attempts); None after
        # a warm-up. A successful one returns it in its GenerationResult too.
        self.last_run: dict[str, Any] | None = None
        self.inject_oom: InjectOOM | None = InjectOOM.from_env()
        if self.inject_oom is not None:
            self._log.warning(
                "out-of-memory fault injection is on: jobs above its limit fail as if out of memory",
                injector=repr(self.inject_oom),
                variable=OOM_ENV_VAR,
            )
        # Adapters first, into the full-precision weights: quantizing and compiling come after
        # (apply_options), in that order.
        self._adapters = Adapters.load(
            pipe, family, self.options.loras, self.options.always_on, cache_dir=cache_dir, log=self._log
        )
        applied = apply_options(pipe, family, self.options, device, self._log)
        self.engine = applied.engine
        self.engine["loras"] = self._adapters.describe()
        self._placement = Placement(pipe, device, self._log)
        self._placement.place(self.engine["offload"])
        self._call = PipelineCall(
            family,
            device,
            self._placement,
            self._adapters,
            applied.sdpa,
            self.options.decode_chunk_size,
            self._log,
        )
        ladder = self.options.ladder
        if self.fixed_size is not None:  # no smaller size to fall back to
            ladder = replace(ladder, rungs=tuple(r for r in ladder.rungs if r != LOWER_RESOLUTION))
        self._ladder = ladder

    # -- generation -------------------------------------------------------------------------------

    def check(self, req: GenerationRequest) -> None:
        """Everything this model cannot take, as a GenerationError, before any model work."""
        self.info.check(req)

    def close(self) -> None:
        """Drop the pipeline and give its GPU memory back."""
        self._pipe = None
        free_memory(self._torch_device)

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        self.check(req)  # before any model work
        if not self.family.takes_prompt:
            self._log.info(
                f"{self.family.label} takes no prompt: the clip is made from the image alone;"
                " the prompt and negative prompt are not used",
                family=self.family.name,
            )
        configured = self.engine["offload"]
        requested = Setting(req.width, req.height, req.num_frames, configured)
        walk = LadderWalk(
            requested,
            self._ladder,
            family=self.family,
            multiple=self.size_multiple,
            device=self._torch_device,
            log=self._log,
        )

        def attempt(setting: Setting, record: dict[str, Any], first: bool) -> np.ndarray:
            return self._call(
                self._pipe,
                req,
                setting,
                on_step,
                record,
                # A smaller rung is a new shape: run it eagerly rather than compile it for one job.
                eager_on_recompile=self.engine["compile"] and not first,
                inject_oom=self.inject_oom,
            )

        with self._lock:
            self.last_run = None
            try:
                video = walk.run(attempt)
            except GenerationError:
                if walk.exhausted:
                    self.last_run = walk.record(self.engine, ok=False)
                raise
            finally:
                self._placement.restore(configured)
        self.last_run = walk.record(self.engine, ok=True)
        if len(walk.attempts) > 1:
            self._log.warning(
                "clip made with smaller settings after running out of memory",
                requested=requested.describe(),
                made=walk.setting.describe(),
                attempts=len(walk.attempts),
            )
        # Same rounding as diffusers' own numpy -> PIL conversion.
        frames = (video * 255).round().clip(0, 255).astype(np.uint8)
        return GenerationResult(frames, self.last_run)

    def warm_up(self, *, short_side: int = 512, num_frames: int = 16, steps: int = 2) -> float:
        """One small generation now, so the first real job does not pay for the start-up work.

        The first run on a GPU initialises CUDA, cuBLAS and cuDNN and loads kernels; with
        ``model.compile`` it also compiles the denoiser for the default clip shape (a square of
        ``short_side``, ``num_frames`` frames rounded to what the family takes: pass the
        [generation] defaults). Returns the seconds it took. Running out of memory is logged, not
        raised (jobs will walk down the ladder); any other failure raises, since every job would fail
        the same way.
        """
        if self.fixed_size is not None:
            width, height = self.fixed_size
        else:
            multiple = self.size_multiple
            width = height = max(multiple, round(short_side / multiple) * multiple)
        frames = self.family.fit_frames(num_frames)
        ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
        image = Image.fromarray(np.tile(ramp, (height, 1, 3)))
        req = GenerationRequest(
            image=image,
            width=width,
            height=height,
            prompt="warm-up",
            negative_prompt="",
            num_frames=frames,
            fps=8,
            steps=steps,
            guidance_scale=5.0,
            seed=0,
            # A model that makes clips between two frames only is warmed up with one.
            last_image=image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.family.needs_end_frame
            else None,
        )
        t0 = time.monotonic()
        try:
            self._generate_or_uncompile(req)
        except GenerationError as exc:
            self._log.warning("warm-up could not finish", error=str(exc))
        finally:
            self.last_run = None  # a warm-up is not a job
        seconds = time.monotonic() - t0
        self._log.info(
            "model warmed up",
            seconds=round(seconds, 2),
            size=f"{width}x{height}",
            frames=frames,
            steps=steps,
        )
        return seconds

    def _generate_or_uncompile(self, req: GenerationRequest) -> None:
        """``generate``; should torch.compile fail, undo it and generate eagerly (GenerationError passes)."""
        try:
            self.generate(req)
        except GenerationError:
            raise
        except Exception as exc:
            if not self.engine["compile"]:
                raise
            # A compiler that cannot handle this model or GPU must not keep the daemon down.
            self._log.error("torch.compile failed; the model runs without it", error=first_line(exc))
            uncompile(self._pipe, self.family)
            self.engine["compile"] = False
            self.generate(req)
