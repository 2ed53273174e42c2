"""The generation backend: turns one job's image and parameters into video frames.

The daemon sees only ``Generator`` and ``GenerationRequest``. torch and diffusers are imported
lazily, inside ``DiffusersGenerator``, so commands that never generate (``status``, ``submit``,
``recipes``) and the ``stub`` generator start in milliseconds.

``DiffusersGenerator`` applies the ``[model]`` speed and memory options once at load
(``EngineOptions``; CUDA-only ones are ignored with a log line on a CPU), rescues a job that runs
out of memory by walking down the ladder of ``daemon.oom``, and describes what it really ran in
``last_run``. ``warm_up()`` runs one small generation so the first job is not the slow one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from . import logs
from .errors import GenerationError
from .images import fit_to
from .oom import ENV_VAR as OOM_ENV_VAR
from .oom import (
    InjectOOM,
    Ladder,
    Setting,
    exhausted_message,
    free_memory,
    is_out_of_memory,
    parse_short_sides,
)
from .tiny import TINY_VERSION, build_tiny

if TYPE_CHECKING:
    import torch

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


def _check_request(req: GenerationRequest, size_multiple: int) -> None:
    """Reject what the model cannot run, in words the person who dropped the job can act on."""
    if req.width <= 0 or req.height <= 0 or req.width % size_multiple or req.height % size_multiple:
        raise GenerationError(
            f"The clip size {req.width}x{req.height} does not suit this model: width and height must be"
            f" positive multiples of {size_multiple}."
        )
    if req.image.size != (req.width, req.height):
        raise GenerationError(
            f"The image was prepared at {req.image.size[0]}x{req.image.size[1]} but the clip is"
            f" {req.width}x{req.height}; this is a bug in i2vd, please report it."
        )
    if req.num_frames < 1 or req.steps < 1 or req.fps < 1:
        raise GenerationError(
            f"num_frames ({req.num_frames}), steps ({req.steps}) and fps ({req.fps}) must all be at least 1."
        )
    if not 0 <= req.seed < 2**64:  # what torch's generators accept
        raise GenerationError(
            f"The seed {req.seed} is out of range: use a whole number from 0 to {2**64 - 1}."
        )


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
        _check_request(req, self.size_multiple)
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


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    name = dtype.strip().lower()
    if name == "auto":
        # float16 halves GPU memory and is what I2VGen-XL is published in; CPUs are slow or
        # inexact at float16, so float32 there.
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPE_NAMES:
        raise ValueError(f"model.dtype must be 'auto', 'float16', 'bfloat16' or 'float32', not {dtype!r}.")
    return getattr(torch, _DTYPE_NAMES[name])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def weights_variant(dtype: torch.dtype) -> str | None:
    """The Hub file variant to load for ``dtype``: ``fp16`` files (half the download) for half precision.

    ``ali-vilab/i2vgen-xl`` publishes ``*.fp16.safetensors`` beside the float32 files; bfloat16 is
    made from them too (fp16 -> bf16 loses nothing that matters for inference).
    """
    import torch

    return "fp16" if dtype in (torch.float16, torch.bfloat16) else None


# -- speed and memory options ---------------------------------------------------------------------

ATTENTION_CHOICES = ("auto", "sdpa", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "xformers", "eager")
OFFLOAD_CHOICES = ("none", "model", "sequential")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# torch.compile keeps one compiled graph per clip shape (dynamic=False); its default limit of 8 would
# silently fall back to eager for the ninth aspect ratio. Clip sizes are bucketed (short side fixed
# by the resolution, long side rounded to the model's multiple), so a daemon sees a bounded set.
_RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class EngineOptions:
    """The ``[model]`` speed and memory settings, as the generator applies them (see config.example.toml)."""

    attention: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"
    channels_last: bool = False
    decode_chunk_size: int = 8
    ladder: Ladder = field(default_factory=Ladder)

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("attention", self.attention, ATTENTION_CHOICES),
            ("offload", self.offload, OFFLOAD_CHOICES),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
        ):
            if value not in choices:
                raise ValueError(f"model.{name} must be one of {', '.join(choices)}, not {value!r}")
        if self.decode_chunk_size < 1:
            raise ValueError(f"model.decode_chunk_size must be at least 1, not {self.decode_chunk_size}")

    @classmethod
    def from_config(cls, model: Any) -> EngineOptions:
        """From a validated ``ModelConfig`` (``settings.model``)."""
        return cls(
            attention=model.attention,
            compile=model.compile,
            compile_mode=model.compile_mode,
            vae_slicing=model.vae_slicing,
            vae_tiling=model.vae_tiling,
            offload=model.offload,
            channels_last=model.channels_last,
            decode_chunk_size=model.decode_chunk_size,
            ladder=Ladder(
                rungs=tuple(model.oom_ladder),
                short_sides=parse_short_sides(model.oom_resolutions),
                min_frames=model.oom_min_frames,
            ),
        )


class DiffusersGenerator:
    """An I2VGen-XL pipeline loaded once and kept warm; one ``generate`` at a time.

    After each ``generate`` (successful or not), ``last_run`` describes what was really run: the
    clip size, frames and offload finally used, the engine settings in force and every attempt the
    out-of-memory ladder made (``daemon.oom``). ``inject_oom`` holds the test-only fault injector.
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
    ) -> None:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from .pipeline import DaemonI2VGenXLPipeline

        torch_device = _resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, torch_device)
        # A service logs to journald: loading progress bars are just noise there.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        variant = None
        if model_id == TINY_ID:
            source: str | Path = build_tiny(Path(cache_dir) / f"tiny-i2vgenxl-v{TINY_VERSION}")
            revision = f"v{TINY_VERSION}"  # the recipe, recorded in each job's metadata
        elif Path(model_id).expanduser().is_dir():
            source = Path(model_id).expanduser()
            revision = None  # a local folder has no revision
            variant = weights_variant(torch_dtype)
        elif model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:  # a Hub id is "owner/name"
            raise FileNotFoundError(f"model.id {model_id!r} looks like a folder, but no such folder exists.")
        else:
            source = model_id
            variant = weights_variant(torch_dtype)
            # The daemon never downloads (a 10 GB fetch inside a service start, under systemd's
            # start timeout, fails badly); `i2vd fetch-model` (daemon/fetch.py) does that ahead of
            # time, so a model missing from the cache fails fast with the command to run.
            kwargs.update(revision=revision, cache_dir=str(cache_dir), local_files_only=True)
        try:
            pipe = _from_pretrained(DaemonI2VGenXLPipeline, source, variant, kwargs)
        except Exception as exc:
            hint = " If it is not downloaded yet, run `i2vd fetch-model`." if source == model_id else ""
            raise RuntimeError(f"Could not load model {model_id!r} (from {source}): {exc}{hint}") from exc
        self._setup(pipe, model_id, revision, torch_device, options)

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
        """Wrap an I2VGen-XL pipeline built in memory (benchmarks); it shares ``pipe``'s modules."""
        from .pipeline import DaemonI2VGenXLPipeline

        if not isinstance(pipe, DaemonI2VGenXLPipeline):
            pipe = DaemonI2VGenXLPipeline(**pipe.components)
        self = cls.__new__(cls)
        self._setup(pipe, model_id, revision, _resolve_device(device), options)
        return self

    def _setup(
        self,
        pipe: Any,
        model_id: str,
        revision: str | None,
        device: torch.device,
        options: EngineOptions | None,
    ) -> None:
        import torch

        self._torch = torch
        self.model_id = model_id
        self.revision = revision
        self._torch_device = device
        self.device = str(device)
        self.options = options or EngineOptions()
        self._log = logs.get()
        self._pipe = pipe
        self._lock = threading.Lock()
        self.size_multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)
        self.last_run: dict[str, Any] | None = None
        self.inject_oom: InjectOOM | None = InjectOOM.from_env()
        if self.inject_oom is not None:
            self._log.warning(
                "out-of-memory fault injection is on: jobs above its limit fail as if out of memory",
                injector=repr(self.inject_oom),
                variable=OOM_ENV_VAR,
            )
        self._placed: str | None = None  # where the weights are now: an offload mode, None before placing
        self._sdpa: list[Any] | None = None  # SDPA kernels in priority order, None: torch's own choice
        self.engine = self._apply_options()
        self._place(self.engine["offload"])

    # -- options ----------------------------------------------------------------------------------

    def _ignored(self, option: str, value: object, reason: str) -> None:
        self._log.info("model option ignored", option=f"model.{option}", value=value, reason=reason)

    def _apply_options(self) -> dict[str, Any]:
        """Apply the speed and memory options once, at load; what is in force goes into each job's record."""
        torch, pipe, opts = self._torch, self._pipe, self.options
        cuda = self._torch_device.type == "cuda"
        on_cpu = "this needs a CUDA GPU; the model runs on the CPU"
        engine: dict[str, Any] = {}

        attention = opts.attention
        if attention in ("sdpa_cudnn", "sdpa_efficient", "xformers") and not cuda:
            self._ignored("attention", attention, on_cpu)
            attention = "auto"
        if attention in ("sdpa", "eager"):
            from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

            processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
            pipe.unet.set_attn_processor(processor())
            pipe.vae.set_attn_processor(processor())
        elif attention == "xformers":
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # not installed, or built for another torch/CUDA
                raise RuntimeError(
                    f"model.attention = 'xformers' cannot be used here ({exc}). Install a matching xformers"
                    " package or set model.attention = 'auto'."
                ) from exc
        elif attention.startswith("sdpa_"):
            from torch.nn.attention import SDPBackend

            # Preferred kernel first; the others stay allowed, for the calls it cannot serve (this
            # UNet's image-latent encoder has 4-wide heads, which cuDNN and FlashAttention refuse).
            first = {
                "sdpa_cudnn": [SDPBackend.CUDNN_ATTENTION],
                "sdpa_efficient": [SDPBackend.EFFICIENT_ATTENTION],
                "sdpa_math": [SDPBackend.MATH],
            }[attention]
            rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
            self._sdpa = first + ([] if attention == "sdpa_math" else [b for b in rest if b not in first])
        engine["attention"] = attention

        if opts.channels_last:
            # 4-D conv weights only: Module.to(memory_format=...) refuses the 5-D temporal convs.
            for module in pipe.unet.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.data = module.weight.data.to(memory_format=torch.channels_last)
        engine["channels_last"] = opts.channels_last

        if opts.vae_slicing:
            pipe.vae.enable_slicing()
        if opts.vae_tiling:
            pipe.vae.enable_tiling()
        engine["vae_slicing"], engine["vae_tiling"] = opts.vae_slicing, opts.vae_tiling
        engine["decode_chunk_size"] = opts.decode_chunk_size

        offload = opts.offload
        if offload != "none" and not cuda:
            self._ignored("offload", offload, on_cpu)
            offload = "none"
        engine["offload"] = offload

        compiled: str | bool = False
        if opts.compile and not cuda:
            self._ignored("compile", True, "compiling for the CPU takes minutes per clip shape")
        elif opts.compile:
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
            mode = None if opts.compile_mode == "default" else opts.compile_mode
            # dynamic=False: one graph per clip shape, each compiled the first time it is seen (the
            # warm-up compiles the default one). Sizes are bucketed, so shapes repeat.
            pipe.unet.compile(mode=mode, dynamic=False)
            compiled = opts.compile_mode
        engine["compile"] = compiled
        return engine

    def _place(self, offload: str) -> None:
        """Put the weights where ``offload`` says: all on the device, or moved in as they run."""
        if offload == self._placed:
            return
        pipe, device = self._pipe, self._torch_device
        if self._placed != "none":  # offload hooks, or an unknown state: remove any (a no-op if none)
            pipe.remove_all_hooks()
        if offload == "none":
            pipe.to(device)
        elif offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        self._placed = offload

    def _restore_placement(self, offload: str) -> None:
        """Back to the configured placement after a job that fell back to offload; never raises."""
        try:
            self._place(offload)
        except Exception as exc:  # e.g. out of memory moving the weights back onto the GPU
            self._placed = None  # unknown: the next try places the weights afresh (inside the ladder)
            self._log.error("could not move the model back onto the device", error=_first_line(exc))

    # -- generation -------------------------------------------------------------------------------

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        _check_request(req, self.size_multiple)
        torch, device = self._torch, self._torch_device
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
                        oom = _first_line(exc)
                    # Out of the except block: the failed try's tensors (held by the traceback) are gone.
                    record.update(seconds=round(time.monotonic() - t0, 3))
                    if oom is None:
                        record.pop("stage", None)  # where a failed try failed; this one did not
                        attempts.append({**record, "outcome": "ok"})
                        break
                    attempts.append({**record, "outcome": "out_of_memory", "error": oom})
                    free_memory(device)
                    step = self.options.ladder.next(
                        setting,
                        requested=requested,
                        multiple=self.size_multiple,
                        can_offload=device.type == "cuda",
                    )
                    if step is None:
                        self.last_run = self._run_record(requested, setting, attempts, ok=False)
                        self._log.error("out of memory at every step of the ladder", tried=len(attempts))
                        tried = [
                            Setting(a["width"], a["height"], a["num_frames"], a["offload"]) for a in attempts
                        ]
                        raise GenerationError(
                            exhausted_message(tried, on_gpu=device.type == "cuda", requested=requested)
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
                self._pipe.step_callback = None
                self._restore_placement(configured)
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
        torch, device, pipe = self._torch, self._torch_device, self._pipe
        size = (setting.width, setting.height)
        # A smaller rung: the same picture, centre-cropped to the new aspect ratio and resized
        # (never stretched).
        image = req.image if size == (req.width, req.height) else fit_to(req.image, *size)
        self._place(setting.offload)
        detach = self.inject_oom.attach(pipe) if self.inject_oom is not None else None
        pipe.step_callback = on_step
        try:
            with contextlib.ExitStack() as stack:
                if self._sdpa is not None:
                    from torch.nn.attention import sdpa_kernel

                    stack.enter_context(sdpa_kernel(self._sdpa, set_priority=True))
                if self.engine["compile"] and not first:
                    # A smaller rung is a new shape: run it eagerly rather than compile it for one job.
                    stack.enter_context(torch.compiler.set_stance("eager_on_recompile"))
                # The pipeline samples the image latent (vae.encode(...).latent_dist.sample()) from the
                # global RNG, not from `generator`: seed that too, inside fork_rng so the caller's global
                # state is left as it was. Together: the same request gives the same frames.
                cuda_devices = [device.index] if device.type == "cuda" else []
                stack.enter_context(torch.random.fork_rng(devices=cuda_devices))
                torch.manual_seed(req.seed)
                generator = torch.Generator(device=device).manual_seed(req.seed)
                record["stage"] = "denoise"
                latents = pipe(
                    prompt=req.prompt,
                    image=image.convert("RGB"),
                    height=setting.height,
                    width=setting.width,
                    target_fps=req.fps,
                    num_frames=setting.num_frames,
                    num_inference_steps=req.steps,
                    guidance_scale=req.guidance_scale,
                    negative_prompt=req.negative_prompt or None,
                    generator=generator,
                    output_type="latent",
                ).frames
                pipe.step_callback = None
                record["stage"] = "decode"
                video = self._decode(latents, record)
        finally:
            pipe.step_callback = None
            if detach is not None:
                detach()
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

    def _decode(self, latents: Any, record: dict[str, Any]) -> np.ndarray:
        """Decode in chunks of ``decode_chunk_size`` frames; on out-of-memory halve the chunk, then tile.

        Only when one frame at a time, tiled, still does not fit does the error go to the ladder.
        The denoised latents are kept meanwhile: no denoising step is repeated.
        """
        vae = self._pipe.vae
        chunk = max(1, min(self.options.decode_chunk_size, int(latents.shape[2])))
        tiling_was = bool(getattr(vae, "use_tiling", False))
        try:
            while True:
                error: str | None = None
                try:
                    video = self._pipe.decode_video(latents, chunk)
                except (self._torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    error = _first_line(exc)
                if error is None:
                    record.update(decode_chunk_size=chunk, vae_tiling=bool(vae.use_tiling))
                    return video
                free_memory(self._torch_device)
                if chunk > 1:
                    chunk = max(1, chunk // 2)
                elif not vae.use_tiling:
                    vae.enable_tiling()
                else:
                    raise self._torch.OutOfMemoryError(f"out of memory decoding one frame, tiled: {error}")
                self._log.warning(
                    "out of memory decoding the frames; decoding in smaller pieces",
                    decode_chunk_size=chunk,
                    vae_tiling=bool(vae.use_tiling),
                )
        finally:
            if bool(vae.use_tiling) != tiling_was:
                vae.disable_tiling()

    def _run_record(
        self, requested: Setting, final: Setting, attempts: list[dict[str, Any]], *, ok: bool
    ) -> dict[str, Any]:
        last = attempts[-1]
        return {
            "ok": ok,
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
        ``model.compile`` it also compiles the UNet for the default clip shape (a square of
        ``short_side``, ``num_frames`` frames: pass the [generation] defaults). Returns the seconds it
        took. Running out of memory is logged, not raised (jobs will walk down the ladder); any other
        failure raises, since every job would fail the same way.
        """
        size = max(self.size_multiple, round(short_side / self.size_multiple) * self.size_multiple)
        ramp = np.linspace(0, 255, size, dtype=np.uint8)[:, None, None]
        image = Image.fromarray(np.tile(ramp, (1, size, 3)))
        req = GenerationRequest(
            image=image,
            width=size,
            height=size,
            prompt="warm-up",
            negative_prompt="",
            num_frames=num_frames,
            fps=8,
            steps=steps,
            guidance_scale=9.0,
            seed=0,
        )
        t0 = time.monotonic()
        try:
            self.generate(req)
        except GenerationError as exc:
            self._log.warning("warm-up could not finish", error=str(exc))
        finally:
            self.last_run = None  # a warm-up is not a job
        seconds = time.monotonic() - t0
        self._log.info(
            "model warmed up",
            seconds=round(seconds, 2),
            size=f"{size}x{size}",
            frames=num_frames,
            steps=steps,
        )
        return seconds


def _from_pretrained(cls: Any, source: str | Path, variant: str | None, kwargs: dict[str, Any]) -> Any:
    """Load, preferring the ``variant`` files (fp16: half the size) and falling back to the plain ones."""
    if variant is not None:
        try:
            return cls.from_pretrained(source, variant=variant, **kwargs)
        except ValueError as exc:
            if "variant" not in str(exc):
                raise
    return cls.from_pretrained(source, **kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


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
    """``stub`` / ``stub:SECONDS`` -> StubGenerator; anything else (``tiny``, folder, Hub id) -> diffusers.

    ``options``: the ``[model]`` speed and memory settings (``EngineOptions.from_config(settings.model)``);
    None means the defaults. ``family`` (``[model] family``): "auto" detects the model family from
    ``model_index.json``; SVD, LTX-Video, Wan and CogVideoX models (and ``tiny-svd``, ...) run through
    ``daemon.families.FamilyGenerator``, I2VGen-XL through ``DiffusersGenerator``.
    """
    if model_id == STUB_ID or model_id.startswith(STUB_ID + ":"):
        _, _, seconds = model_id.partition(":")
        try:
            return StubGenerator(float(seconds) if seconds else 0.0)
        except ValueError:
            raise ValueError(
                f"model.id {model_id!r}: write 'stub' or 'stub:SECONDS' (e.g. stub:2.5)."
            ) from None
    if model_id != TINY_ID:
        family_gen = _load_family_generator(
            model_id, family=family, revision=revision, device=device, dtype=dtype, cache_dir=cache_dir
        )
        if family_gen is not None:
            return family_gen
    return DiffusersGenerator(
        model_id, revision=revision, device=device, dtype=dtype, cache_dir=cache_dir, options=options
    )


def _load_family_generator(
    model_id: str, *, family: str, revision: str | None, device: str, dtype: str, cache_dir: Path
) -> Generator | None:
    """A ``FamilyGenerator`` for a non-I2VGen-XL model (see daemon/families.py); None for I2VGen-XL."""
    from . import families, tiny_families

    load_kwargs: dict[str, Any] = {}
    if model_id in tiny_families.BUILDERS:
        detected = tiny_families.BUILDERS[model_id][0]
        if family not in ("auto", detected):
            raise ValueError(f"model.family is {family!r} but {model_id!r} is a {detected} model.")
        source: str | Path = tiny_families.build(
            model_id, Path(cache_dir) / tiny_families.folder_name(model_id)
        )
        revision = f"v{tiny_families.TINY_FAMILIES_VERSION}"
    else:
        detected = families.detect_family(model_id, family=family, cache_dir=cache_dir, revision=revision)
        if detected == families.I2VGENXL:
            return None
        if Path(model_id).expanduser().is_dir():
            source, revision = Path(model_id).expanduser(), None
        else:
            source = model_id
            load_kwargs.update(revision=revision, cache_dir=str(cache_dir), local_files_only=True)
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    try:
        return families.FamilyGenerator(
            detected,
            source,
            model_id=model_id,
            revision=revision,
            device=torch_device,
            dtype=torch_dtype,
            load_kwargs=load_kwargs,
        )
    except Exception as exc:
        hint = " If it is not downloaded yet, run `i2vd fetch-model`." if source == model_id else ""
        raise RuntimeError(f"Could not load model {model_id!r} (from {source}): {exc}{hint}") from exc
