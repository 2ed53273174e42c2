"""The generation backend: turns one job's image and parameters into video frames.

The daemon sees only ``Generator`` and ``GenerationRequest``. torch and diffusers are imported
lazily, inside ``DiffusersGenerator``, so commands that never generate (``status``, ``submit``,
``recipes``) and the ``stub`` generator start in milliseconds.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .errors import GenerationError
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

    It sleeps ``seconds`` in total (spread over the steps, so an abort between steps is as prompt as
    with a real model) and returns frames derived only from the image and seed: the image under a
    brightness ramp that moves across it from frame to frame.
    """

    model_id = STUB_ID
    revision: str | None = None
    device = "cpu"
    size_multiple = 8

    def __init__(self, seconds: float = 0.0) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"stub seconds must be a number >= 0, not {seconds}")
        self.seconds = seconds

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        _check_request(req, self.size_multiple)
        for done in range(1, req.steps + 1):
            if self.seconds:
                time.sleep(self.seconds / req.steps)
            if on_step is not None:
                on_step(done, req.steps)
        base = np.asarray(req.image.convert("RGB"), dtype=np.float32)
        phase = np.random.default_rng(req.seed).random()  # the seed shifts where the ramp starts
        x = np.arange(req.width, dtype=np.float32) / req.width
        frames = np.empty((req.num_frames, req.height, req.width, 3), dtype=np.uint8)
        for f in range(req.num_frames):
            ramp = 0.6 + 0.4 * np.sin(2 * np.pi * (x - f / req.num_frames + phase))  # in [0.2, 1.0]
            frames[f] = np.clip(base * ramp[None, :, None], 0, 255).round().astype(np.uint8)
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


class DiffusersGenerator:
    """An I2VGen-XL pipeline loaded once and kept warm; one ``generate`` at a time."""

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path,
    ) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from .pipeline import DaemonI2VGenXLPipeline

        self.model_id = model_id
        self._torch_device = _resolve_device(device)
        self.device = str(self._torch_device)
        self._dtype = _resolve_dtype(dtype, self._torch_device)
        # A service logs to journald: loading progress bars are just noise there.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        kwargs: dict[str, Any] = {"dtype": self._dtype}
        if model_id == TINY_ID:
            source: str | Path = build_tiny(Path(cache_dir) / f"tiny-i2vgenxl-v{TINY_VERSION}")
            self.revision: str | None = f"v{TINY_VERSION}"  # the recipe, recorded in each job's metadata
        elif Path(model_id).expanduser().is_dir():
            source = Path(model_id).expanduser()
            self.revision = None  # a local folder has no revision
        elif model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:  # a Hub id is "owner/name"
            raise FileNotFoundError(f"model.id {model_id!r} looks like a folder, but no such folder exists.")
        else:
            source = model_id
            self.revision = revision
            # Downloading is decided elsewhere; here we only honour an offline hub, so a missing
            # model fails fast with "not in the cache" instead of waiting on the network.
            kwargs.update(revision=revision, cache_dir=str(cache_dir), local_files_only=_offline())
        try:
            pipe = DaemonI2VGenXLPipeline.from_pretrained(source, **kwargs)
        except Exception as exc:
            raise RuntimeError(f"Could not load model {model_id!r} (from {source}): {exc}") from exc
        pipe.to(self._torch_device)
        self._pipe = pipe
        self.size_multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)
        self._lock = threading.Lock()
        self._torch = torch

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        _check_request(req, self.size_multiple)
        torch = self._torch
        device = self._torch_device
        with self._lock:
            self._pipe.step_callback = on_step
            try:
                # The pipeline samples the image latent (vae.encode(...).latent_dist.sample()) from the
                # global RNG, not from `generator`: seed that too, inside fork_rng so the caller's global
                # state is left as it was. Together: the same request gives the same frames.
                with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
                    torch.manual_seed(req.seed)
                    generator = torch.Generator(device=device).manual_seed(req.seed)
                    out = self._pipe(
                        prompt=req.prompt,
                        image=req.image.convert("RGB"),
                        height=req.height,
                        width=req.width,
                        target_fps=req.fps,
                        num_frames=req.num_frames,
                        num_inference_steps=req.steps,
                        guidance_scale=req.guidance_scale,
                        negative_prompt=req.negative_prompt or None,
                        generator=generator,
                        output_type="np",
                    )
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_out_of_memory(exc):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                raise GenerationError(
                    f"The {'GPU' if device.type == 'cuda' else 'computer'} ran out of memory making a"
                    f" {req.width}x{req.height}, {req.num_frames}-frame clip. Try a lower resolution or"
                    " fewer frames."
                ) from exc
            finally:
                self._pipe.step_callback = None
        video = np.asarray(out.frames[0])  # (frames, height, width, 3), floats in [0, 1]
        if not np.isfinite(video).all():
            raise GenerationError(
                "The model produced invalid pixels (not-a-number). This usually means float16 overflowed:"
                " ask the operator to set model.dtype to bfloat16 or float32."
            )
        if video.shape != (req.num_frames, req.height, req.width, 3):
            raise GenerationError(
                f"The model returned frames shaped {video.shape}, expected"
                f" {(req.num_frames, req.height, req.width, 3)}; this is a bug in i2vd, please report it."
            )
        # Same rounding as diffusers' own numpy -> PIL conversion.
        return (video * 255).round().clip(0, 255).astype(np.uint8)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def load_generator(
    model_id: str, *, revision: str | None, device: str, dtype: str, cache_dir: Path
) -> Generator:
    """``stub`` / ``stub:SECONDS`` -> StubGenerator; anything else (``tiny``, folder, Hub id) -> diffusers."""
    if model_id == STUB_ID or model_id.startswith(STUB_ID + ":"):
        _, _, seconds = model_id.partition(":")
        try:
            return StubGenerator(float(seconds) if seconds else 0.0)
        except ValueError:
            raise ValueError(
                f"model.id {model_id!r}: write 'stub' or 'stub:SECONDS' (e.g. stub:2.5)."
            ) from None
    return DiffusersGenerator(model_id, revision=revision, device=device, dtype=dtype, cache_dir=cache_dir)
