"""The generation backend: turns one job's image and parameters into video frames.

The daemon sees only ``Generator`` and ``GenerationRequest``. torch and diffusers are imported
lazily, inside ``DiffusersGenerator``, so commands that never generate (``status``, ``submit``,
``recipes``) and the ``stub`` generator start in milliseconds.

``DiffusersGenerator`` runs any model family of ``daemon.engine.families`` (I2VGen-XL, Stable Video
Diffusion, LTX-Video, Wan, CogVideoX): it applies the ``[model]`` speed and memory options once at
load (``daemon.engine.options``; CUDA-only ones are ignored with a log line on a CPU), rescues a job that
runs out of memory by walking down the ladder of ``daemon.engine.oom``, and describes what it really ran
in ``last_run``. ``warm_up()`` runs one small generation so the first job is not the slow one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from daemon import logs
from daemon.engine.families import (
    I2VGENXL,
    Family,
    detect_family,
    family_of_pipeline,
    fixed_size,
    ftfy_fallback,
    get_family,
    pipeline_class,
    pipeline_multiple,
)
from daemon.engine.oom import ENV_VAR as OOM_ENV_VAR
from daemon.engine.oom import (
    LOWER_RESOLUTION,
    InjectOOM,
    Setting,
    exhausted_message,
    first_line,
    free_memory,
    is_out_of_memory,
    rescued_decode,
)
from daemon.engine.options import EngineOptions, Placement, apply_options, reset_cache, uncompile
from daemon.errors import GenerationError
from daemon.job.image import fit_to
from daemon.tiny import TINY_VERSION, build_tiny

if TYPE_CHECKING:
    import torch

__all__ = ["DiffusersGenerator", "EngineOptions", "GenerationRequest", "Generator", "StubGenerator"]

StepCallback = Callable[[int, int], None]

# Model ids that never touch the Hub.
TINY_ID = "tiny"
STUB_ID = "stub"


@dataclass(frozen=True)
class GenerationRequest:
    """One job's generation inputs, already validated and sized by the daemon."""

    image: Image.Image  # RGB, exactly width x height
    width: int
    height: int
    prompt: str
    negative_prompt: str
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int


@runtime_checkable
class Generator(Protocol):
    """What the daemon needs from a model backend."""

    model_id: str
    revision: str | None
    device: str
    size_multiple: int  # width and height must be multiples of this

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        """Frames as uint8, shaped (num_frames, height, width, 3).

        ``on_step(done, total)`` is called after each denoising step with done = 1..total; an
        exception it raises stops generation and propagates unchanged (how a job is aborted).
        Raises ``GenerationError`` when this job cannot be generated.
        """
        ...


def _check_image(req: GenerationRequest) -> None:
    if req.image.size != (req.width, req.height):
        raise GenerationError(
            f"The image was prepared at {req.image.size[0]}x{req.image.size[1]} but the clip is"
            f" {req.width}x{req.height}; this is a bug in i2vd, please report it."
        )


# The stand-in's rules: any frame count, sizes in multiples of 8, like the least of the real models.
_STUB_FAMILY = Family("stub", "", "the stand-in generator", denoiser="", size_multiple=8)


class StubGenerator:
    """A stand-in that does no model work, for tests and benchmarks of everything around the model.

    It takes ``seconds`` in total, like a GPU that needs that long (the frames are made first and
    the rest is slept, spread over the steps so an abort between steps is as prompt as with a real
    model), and returns frames derived only from the image and seed: the image under a brightness
    ramp that moves across it from frame to frame.
    """

    model_id = STUB_ID
    revision: str | None = None
    device = "cpu"
    size_multiple = 8

    def __init__(self, seconds: float = 0.0) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"stub seconds must be a number >= 0, not {seconds}")
        self.seconds = seconds
        self.last_run: dict[str, Any] | None = None

    def warm_up(self, **_: object) -> float:
        """Nothing to warm up."""
        return 0.0

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        _STUB_FAMILY.check(req, self.size_multiple)
        _check_image(req)
        deadline = time.monotonic() + self.seconds
        base = np.asarray(req.image.convert("RGB"), dtype=np.float32)
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
        self.last_run = {"ok": True, "width": req.width, "height": req.height, "num_frames": req.num_frames}
        return frames


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def _resolve_device(device: str) -> torch.device:
    import torch

    name = device.strip().lower()
    if not _DEVICE_RE.match(name):
        raise ValueError(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise RuntimeError(
                f"model.device is {device!r} but PyTorch sees no usable CUDA GPU here (torch"
                f" {torch.__version__}, {build}). Check the NVIDIA driver and the PyTorch install,"
                " or set model.device = 'cpu'."
            )
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"model.device is {device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)"
                f" (cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
        return torch.device("cuda", index)
    return torch.device("cpu")


def _resolve_dtype(dtype: str, device: torch.device, family: Family | None = None) -> torch.dtype:
    """``model.dtype`` as a torch dtype; "auto" is float32 on a CPU and the family's own on a GPU."""
    import torch

    name = dtype.strip().lower()
    if name == "auto":
        if device.type != "cuda":
            # CPUs are slow or inexact at half precision.
            return torch.float32
        # What the weights are published in: float16 for the UNets (halves the memory), bfloat16 for
        # the transformers, where float16 overflows; bfloat16 needs an Ampere or newer GPU.
        wanted = family.gpu_dtype if family is not None else "float16"
        if wanted == "bfloat16" and not torch.cuda.is_bf16_supported():
            wanted = "float16"
        return getattr(torch, wanted)
    if name not in _DTYPE_NAMES:
        raise ValueError(f"model.dtype must be 'auto', 'float16', 'bfloat16' or 'float32', not {dtype!r}.")
    return getattr(torch, _DTYPE_NAMES[name])


def _component_dtypes(family: Family, dtype: torch.dtype, asked: str, device: torch.device) -> Any:
    """The ``dtype`` argument of ``from_pretrained``: one dtype, or per component for "auto" on a GPU.

    Wan's VAE and image encoder run in float32 in the examples its authors and diffusers publish;
    both are small beside the 14B transformer.
    """
    import torch

    if asked.strip().lower() != "auto" or device.type != "cuda" or not family.float32_parts:
        return dtype
    return {"default": dtype, **dict.fromkeys(family.float32_parts, torch.float32)}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def weights_variant(dtype: torch.dtype) -> str | None:
    """The Hub file variant to load for ``dtype``: ``fp16`` files (half the download) for half precision.

    ``ali-vilab/i2vgen-xl`` publishes ``*.fp16.safetensors`` beside the float32 files; bfloat16 is
    made from them too (fp16 -> bf16 loses nothing that matters for inference).
    """
    import torch

    return "fp16" if dtype in (torch.float16, torch.bfloat16) else None


class DiffusersGenerator:
    """An image-to-video pipeline of any family, loaded once and kept warm; one ``generate`` at a time.

    Every family (``daemon.engine.families``) gets the same engine: the ``[model]`` speed and
    memory options (``daemon.engine.options``), the out-of-memory ladder and decode rescue
    (``daemon.engine.oom``), the warm-up, per-step progress and seeding. After each ``generate``
    (successful or not), ``last_run`` describes what was really run: the clip size, frames and
    offload finally used, the engine settings in force, whether the prompt was used and every
    attempt the ladder made.
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
        torch_device = _resolve_device(device)
        source, revision, family_name, kwargs = _locate(model_id, family, revision, Path(cache_dir))
        # torch.compile's kernels kept beside the weights, not in /tmp (a service's private /tmp is
        # gone at each restart): a restart then loads them in seconds instead of compiling again.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "torch-compile"))
        fam = get_family(family_name)
        torch_dtype = _resolve_dtype(dtype, torch_device, fam)
        cls = pipeline_class(fam)
        ftfy_fallback(cls)
        variant = None if _is_tiny(model_id) else weights_variant(torch_dtype)
        kwargs["dtype"] = _component_dtypes(fam, torch_dtype, dtype, torch_device)
        try:
            pipe = _from_pretrained(cls, source, variant, kwargs)
        except Exception as exc:
            hint = " If it is not downloaded yet, run `i2vd fetch-model`." if source == model_id else ""
            raise RuntimeError(f"Could not load model {model_id!r} (from {source}): {exc}{hint}") from exc
        self._setup(pipe, fam, model_id, revision, torch_device, options)

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        *,
        model_id: str = "custom",
        revision: str | None = None,
        device: str = "auto",
        options: EngineOptions | None = None,
    ) -> DiffusersGenerator:
        """Wrap a pipeline built in memory (benchmarks); it shares ``pipe``'s modules."""
        from daemon.engine.i2vgenxl import DaemonI2VGenXLPipeline

        fam = family_of_pipeline(pipe)
        if fam.name == I2VGENXL and not isinstance(pipe, DaemonI2VGenXLPipeline):
            pipe = DaemonI2VGenXLPipeline(**pipe.components)
        self = cls.__new__(cls)
        self._setup(pipe, fam, model_id, revision, _resolve_device(device), options)
        return self

    def _setup(
        self,
        pipe: Any,
        family: Family,
        model_id: str,
        revision: str | None,
        device: torch.device,
        options: EngineOptions | None,
    ) -> None:
        import torch

        self._torch = torch
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
        self.last_run: dict[str, Any] | None = None
        self.inject_oom: InjectOOM | None = InjectOOM.from_env()
        if self.inject_oom is not None:
            self._log.warning(
                "out-of-memory fault injection is on: jobs above its limit fail as if out of memory",
                injector=repr(self.inject_oom),
                variable=OOM_ENV_VAR,
            )
        applied = apply_options(pipe, family, self.options, device, self._log)
        self.engine = applied.engine
        self._sdpa = applied.sdpa
        self._placement = Placement(pipe, device, self._log)
        self._placement.place(self.engine["offload"])
        ladder = self.options.ladder
        if self.fixed_size is not None:  # no smaller size to fall back to
            ladder = replace(ladder, rungs=tuple(r for r in ladder.rungs if r != LOWER_RESOLUTION))
        self._ladder = ladder

    # -- generation -------------------------------------------------------------------------------

    def check(self, req: GenerationRequest) -> None:
        """Everything this model cannot take, as a GenerationError, before any model work."""
        if self.fixed_size is not None and (req.width, req.height) != self.fixed_size:
            w, h = self.fixed_size
            raise GenerationError(
                f"The clip size {req.width}x{req.height} does not suit this {self.family.label} model: it"
                f" makes {w}x{h} clips only."
            )
        self.family.check(req, self.size_multiple)
        _check_image(req)

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        self.check(req)  # before any model work
        torch, device = self._torch, self._torch_device
        if not self.family.takes_prompt:
            self._log.info(
                f"{self.family.label} takes no prompt: the clip is made from the image alone;"
                " the prompt and negative prompt are not used",
                family=self.family.name,
            )
        configured = self.engine["offload"]
        requested = Setting(req.width, req.height, req.num_frames, configured)
        setting, change = requested, None
        attempts: list[dict[str, Any]] = []
        with self._lock:
            self.last_run = None
            try:
                while True:
                    t0 = time.monotonic()
                    record: dict[str, Any] = {**asdict(setting), "change": change}
                    oom: str | None = None
                    try:
                        video = self._attempt(req, setting, on_step, record, first=not attempts)
                    except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                        if not is_out_of_memory(exc):
                            raise
                        oom = first_line(exc)
                    # Out of the except block: the failed try's tensors (held by the traceback) are gone.
                    record.update(seconds=round(time.monotonic() - t0, 3))
                    if oom is None:
                        record.pop("stage", None)  # where a failed try failed; this one did not
                        attempts.append({**record, "outcome": "ok"})
                        break
                    attempts.append({**record, "outcome": "out_of_memory", "error": oom})
                    free_memory(device)
                    step = self._ladder.next(
                        setting,
                        requested=requested,
                        multiple=self.size_multiple,
                        can_offload=device.type == "cuda",
                        fit_frames=self.family.fit_frames,
                    )
                    if step is None:
                        self.last_run = self._run_record(requested, setting, attempts, ok=False)
                        self._log.error("out of memory at every step of the ladder", tried=len(attempts))
                        tried = [
                            Setting(a["width"], a["height"], a["num_frames"], a["offload"]) for a in attempts
                        ]
                        raise GenerationError(
                            exhausted_message(
                                tried,
                                on_gpu=device.type == "cuda",
                                requested=requested,
                                fit_frames=self.family.fit_frames,
                            )
                        )
                    failed, (change, setting) = setting, step
                    self._log.warning(
                        "out of memory; trying again with smaller settings",
                        failed=failed.describe(),
                        next=setting.describe(),
                        step=change,
                        error=oom,
                    )
            finally:
                self._placement.restore(configured)
        self.last_run = self._run_record(requested, setting, attempts, ok=True)
        if len(attempts) > 1:
            self._log.warning(
                "clip made with smaller settings after running out of memory",
                requested=requested.describe(),
                made=setting.describe(),
                attempts=len(attempts),
            )
        # Same rounding as diffusers' own numpy -> PIL conversion.
        return (video * 255).round().clip(0, 255).astype(np.uint8)

    def _attempt(
        self,
        req: GenerationRequest,
        setting: Setting,
        on_step: StepCallback | None,
        record: dict[str, Any],
        *,
        first: bool,
    ) -> np.ndarray:
        """One try at ``setting``: frames as floats in [0, 1]; out-of-memory errors propagate."""
        torch, device, pipe, family = self._torch, self._torch_device, self._pipe, self.family
        size = (setting.width, setting.height)
        # A smaller rung: the same picture, centre-cropped to the new aspect ratio and resized
        # (never stretched).
        image = req.image if size == (req.width, req.height) else fit_to(req.image, *size)
        self._placement.place(setting.offload)
        pixels = setting.width * setting.height * setting.num_frames
        detach = self.inject_oom.attach(pipe, family.denoiser, pixels) if self.inject_oom else None
        if family.name == I2VGENXL:
            pipe.step_callback = on_step  # DaemonI2VGenXLPipeline reports steps through its progress bar
        reset_cache(pipe, family)
        try:
            with contextlib.ExitStack() as stack:
                if self._sdpa is not None:
                    from torch.nn.attention import sdpa_kernel

                    stack.enter_context(sdpa_kernel(self._sdpa, set_priority=True))
                if self.engine["compile"] and not first:
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
                        pipe.vae, device=device, log=self._log, on_first=lambda: record.update(stage="decode")
                    )
                )
                chunk = self.options.decode_chunk_size
                out = pipe(
                    **family.call_kwargs(
                        req,
                        image=image.convert("RGB"),
                        width=setting.width,
                        height=setting.height,
                        num_frames=setting.num_frames,
                        generator=generator,
                        decode_chunk_size=chunk,
                        on_step=on_step,
                    )
                )
                if family.chunked_decode:
                    chunk = min(chunk, setting.num_frames, rescue.limit or chunk)
                    record["decode_chunk_size"] = chunk
                record["vae_tiling"] = bool(getattr(pipe.vae, "use_tiling", False))
        finally:
            if family.name == I2VGENXL:
                pipe.step_callback = None
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

    def _run_record(
        self, requested: Setting, final: Setting, attempts: list[dict[str, Any]], *, ok: bool
    ) -> dict[str, Any]:
        last = attempts[-1]
        return {
            "ok": ok,
            "family": self.family.name,
            "prompt_used": self.family.takes_prompt,
            "width": final.width,
            "height": final.height,
            "num_frames": final.num_frames,
            "offload": final.offload,
            "decode_chunk_size": last.get("decode_chunk_size"),
            "vae_tiling": last.get("vae_tiling"),
            "fallback": len(attempts) > 1,
            "requested": {
                "width": requested.width,
                "height": requested.height,
                "num_frames": requested.num_frames,
            },
            "attempts": attempts,
            "engine": dict(self.engine),
        }

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


def _from_pretrained(cls: Any, source: str | Path, variant: str | None, kwargs: dict[str, Any]) -> Any:
    """Load, preferring the ``variant`` files (fp16: half the size) and falling back to the plain ones."""
    if variant is not None:
        try:
            return cls.from_pretrained(source, variant=variant, **kwargs)
        except ValueError as exc:
            if "variant" not in str(exc):
                raise
    return cls.from_pretrained(source, **kwargs)


def _is_tiny(model_id: str) -> bool:
    from daemon.engine import tiny_families

    return model_id == TINY_ID or model_id in tiny_families.BUILDERS


def _locate(
    model_id: str, family: str, revision: str | None, cache_dir: Path
) -> tuple[str | Path, str | None, str, dict[str, Any]]:
    """Where to load ``model_id`` from: (source, revision to record, family, from_pretrained kwargs).

    ``tiny`` and ``tiny-*`` are built into ``cache_dir`` (no network); a folder is loaded as it is;
    a Hub id only from the cache (``local_files_only``): the daemon never downloads (a 10 GB fetch
    inside a service start, under systemd's start timeout, fails badly), ``i2vd fetch-model``
    (daemon/fetch.py) does that ahead of time, so a missing model fails fast with the command to run.
    """
    from daemon.engine import tiny_families

    if _is_tiny(model_id):
        if model_id == TINY_ID:
            detected = I2VGENXL
            source = build_tiny(cache_dir / f"tiny-i2vgenxl-v{TINY_VERSION}")
            recorded = f"v{TINY_VERSION}"  # the recipe, recorded in each job's metadata
        else:
            detected = tiny_families.BUILDERS[model_id][0]
            source = tiny_families.build(model_id, cache_dir / tiny_families.folder_name(model_id))
            recorded = f"v{tiny_families.TINY_FAMILIES_VERSION}"
        if family not in ("auto", detected):
            raise ValueError(f"model.family is {family!r} but {model_id!r} is a {detected} model.")
        return source, recorded, detected, {}
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return folder, None, detect_family(str(folder), family=family), {}  # a folder has no revision
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:  # a Hub id is "owner/name"
        raise FileNotFoundError(f"model.id {model_id!r} looks like a folder, but no such folder exists.")
    if not _in_cache(model_id, revision, cache_dir):
        # One line naming the fix, instead of the hub library's paragraph about local_files_only;
        # a RuntimeError like every other model that cannot be loaded.
        raise RuntimeError(
            f"model {model_id!r}{f' (revision {revision})' if revision else ''} is not in the model cache "
            f"{cache_dir}: run `i2vd fetch-model` once where the Hugging Face Hub can be reached (the daemon "
            "never downloads), or set model.id to a local model folder or 'tiny'."
        )
    detected = detect_family(model_id, family=family, cache_dir=cache_dir, revision=revision)
    kwargs = {"revision": revision, "cache_dir": str(cache_dir), "local_files_only": True}
    return model_id, revision, detected, kwargs


def _in_cache(model_id: str, revision: str | None, cache_dir: Path) -> bool:
    """Whether ``i2vd fetch-model`` (or any download) has put this model's index into ``cache_dir``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            model_id, "model_index.json", cache_dir=str(cache_dir), revision=revision
        )
    except Exception:  # an id the hub library rejects: let from_pretrained say what is wrong with it
        return True
    return isinstance(found, str)


def load_generator(
    model_id: str,
    *,
    revision: str | None,
    device: str,
    dtype: str,
    cache_dir: Path,
    options: EngineOptions | None = None,
    family: str = "auto",
) -> Generator:
    """``stub`` / ``stub:SECONDS`` -> StubGenerator; anything else (``tiny``, ``tiny-wan``, a folder, a
    Hub id) -> ``DiffusersGenerator``.

    ``options``: the ``[model]`` speed and memory settings (``EngineOptions.from_config(settings.model)``);
    None means the defaults. ``family`` (``[model] family``): "auto" detects the model family from
    ``model_index.json``.
    """
    if model_id == STUB_ID or model_id.startswith(STUB_ID + ":"):
        _, _, seconds = model_id.partition(":")
        try:
            return StubGenerator(float(seconds) if seconds else 0.0)
        except ValueError:
            raise ValueError(
                f"model.id {model_id!r}: write 'stub' or 'stub:SECONDS' (e.g. stub:2.5)."
            ) from None
    return DiffusersGenerator(
        model_id,
        revision=revision,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        options=options,
        family=family,
    )
