"""The config's sections, one pydantic model each: every key, its type, default and bounds.

``daemon.config`` puts them together into ``Settings`` and loads them from the file and the
environment; ``config.example.toml`` documents every key (a test checks that). The sections of
the service around the jobs ([metrics], [webhooks], [cluster], [prompting], [queue]) are in
``config_service``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from daemon.engine.choices import (
    Attention,
    Cache,
    CompileMode,
    CompileScope,
    Offload,
    OomRung,
    Quantize,
    check_device,
)
from daemon.engine.detect import FAMILY_CHOICES
from daemon.engine.options import EngineOptions
from daemon.sizing import resolution_to_short_side

# The engine's option defaults: [model]'s speed and memory keys take theirs from here, so the
# config and the code cannot disagree.
_ENGINE = EngineOptions()

RESOLUTIONS = ("512p", "768p", "1024p")

# What phones, cameras and the web make. HEIF (HEIC, iPhone photos) is read through pillow-heif,
# AVIF through Pillow's own plugin; every other format Pillow knows stays off unless listed.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF", "GIF", "BMP", "TIFF")
# Names people write for them that are not Pillow's.
_FORMAT_ALIASES = {"JPG": "JPEG", "HEIC": "HEIF", "TIF": "TIFF"}

# What file managers and copy tools leave behind; matched against the file name only.
DEFAULT_IGNORE = [
    ".*",
    "Thumbs.db",
    "desktop.ini",
    "~$*",
    "*.part",
    "*.tmp",
    "*.crdownload",
]


# An adapter's name, as [loras.NAME], [model] loras and a prompt file's ``loras`` write it.
AdapterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class Section(BaseModel):
    # A misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid")


class PathsConfig(Section):
    inbox: Path = Path("inbox")
    outputs: Path = Path("outputs")
    done: Path = Path("done")
    failed: Path = Path("failed")
    # None: ``.i2vd`` beside the inbox.
    state: Path | None = None


class WatchConfig(Section):
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float = Field(1.0, gt=0, le=60)
    settle_seconds: float = Field(3.0, ge=0, le=3600)
    pair_timeout: float = Field(120.0, ge=0)
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    # Subfolder levels of the inbox looked into; deeper folders are ignored (and said once in
    # the log). The share page lists as deep.
    max_depth: int = Field(8, ge=1, le=32)
    # After a first SIGTERM/SIGINT the current generation may run this long before it is
    # interrupted and its files returned to the inbox. Keep systemd's TimeoutStopSec above it.
    stop_grace: float = Field(600.0, ge=0)


class ModelConfig(Section):
    id: str = "ali-vilab/i2vgen-xl"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # None: ``models`` inside the state folder (the built-in ``tiny`` is built there too).
    cache_dir: Path | None = None
    # Model family: "auto" reads model_index.json (daemon/engine/detect.py); or force one.
    family: str = "auto"
    # Speed and memory (applied by daemon.engine.runner; config.example.toml explains each). Their
    # defaults are the engine's own (``EngineOptions``), declared once there; they suit one 24 GB+
    # GPU; options that need CUDA are ignored, with a log line, on a CPU.
    attention: Attention = _ENGINE.attention
    compile: bool | Literal["auto"] = _ENGINE.compile
    compile_mode: CompileMode = _ENGINE.compile_mode
    compile_scope: CompileScope = _ENGINE.compile_scope
    # diffusers' caching methods, for the transformer families (LTX-Video, Wan, CogVideoX).
    cache: Cache = _ENGINE.cache
    cache_threshold: float = Field(_ENGINE.cache_threshold, gt=0, le=1)
    cache_interval: int = Field(_ENGINE.cache_interval, ge=2, le=10)
    vae_slicing: bool = _ENGINE.vae_slicing
    vae_tiling: bool = _ENGINE.vae_tiling
    offload: Offload = _ENGINE.offload
    channels_last: bool = _ENGINE.channels_last
    decode_chunk_size: int = Field(_ENGINE.decode_chunk_size, ge=1, le=256)
    warmup: bool = True
    # Out of memory: retry smaller, rung by rung (daemon/engine/oom.py), before failing the job.
    oom_ladder: list[OomRung] = Field(default_factory=lambda: list(_ENGINE.ladder.rungs))
    oom_resolutions: list[str] = Field(default_factory=lambda: [f"{s}p" for s in _ENGINE.ladder.short_sides])
    oom_min_frames: int = Field(_ENGINE.ladder.min_frames, ge=1)
    # Adapters (defined under [loras.NAME]) on for every job, fused into the weights at load.
    loras: list[AdapterName] = Field(default_factory=list)
    # Weight quantization of the denoiser(s) with torchao (daemon/engine/quantize.py).
    quantize: Quantize = _ENGINE.quantize

    @field_validator("loras")
    @classmethod
    def _loras(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each adapter may appear only once")
        return v

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if v.strip().lower() not in FAMILY_CHOICES:
            raise ValueError(f"must be one of {', '.join(FAMILY_CHOICES)}")
        return v.strip().lower()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("oom_ladder")
    @classmethod
    def _oom_ladder(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each step may appear only once")
        return v

    @field_validator("oom_resolutions")
    @classmethod
    def _oom_resolutions(cls, v: list[str]) -> list[str]:
        for r in v:
            resolution_to_short_side(r)  # raises ValueError naming the expected form
        return v


class LoraConfig(Section):
    """One ``[loras.NAME]`` table: a LoRA adapter the model may run with (daemon/engine/adapters.py)."""

    # A Hugging Face Hub id ("owner/name", fetched by `i2vd fetch-model`) or a local .safetensors file.
    id: str = Field(min_length=1)
    # The file inside a Hub repository holding the adapter (required for a Hub id: the daemon loads
    # offline, and diffusers can only guess the file by asking the Hub).
    weight_name: str | None = None
    # How strongly it applies (1.0: as trained; 0.0: not at all).
    scale: float = Field(1.0, ge=-10, le=10)
    # What the adapter needs (a distilled 4-step adapter: steps = 4, guidance_scale = 1.0); used
    # when the job's prompt file does not set them, over [generation] and the model's defaults.
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        path = Path(v).expanduser()
        if v.startswith(("/", ".", "~")) or v.endswith(".safetensors"):
            if path.suffix != ".safetensors":
                raise ValueError(f"{v!r}: a local adapter must be a .safetensors file")
            return str(path)
        if v.count("/") != 1:
            raise ValueError(f"{v!r} is neither a Hub id (owner/name) nor a local .safetensors file")
        return v

    @model_validator(mode="after")
    def _hub_file(self) -> LoraConfig:
        if not self.id.endswith(".safetensors") and not self.weight_name:
            raise ValueError(
                f"the Hub adapter {self.id!r} needs weight_name: the file in the repository that holds it"
                ' (e.g. weight_name = "lora.safetensors"), since the daemon loads adapters offline'
            )
        return self


class GenerationConfig(Section):
    negative_prompt: str = "blurry, low quality, distorted, watermark, text"
    resolution: str = "512p"
    num_frames: int = 16
    fps: int = 8
    # None (unset): the adapter's, else the model family's published value (daemon/engine/families.py).
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    # Used for an image that has no prompt file after watch.pair_timeout; None fails it.
    default_prompt: str | None = None


class LimitsConfig(Section):
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_image_bytes: int = Field(100 * 1024 * 1024, gt=0)
    max_sidecar_bytes: int = Field(64 * 1024, gt=0)
    max_prompt_chars: int = Field(2000, gt=0)
    resolutions: list[str] = Field(default_factory=lambda: list(RESOLUTIONS))
    min_num_frames: int = Field(2, ge=1)
    max_num_frames: int = Field(64, ge=1)
    min_fps: int = Field(1, ge=1)
    max_fps: int = Field(60, ge=1)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(150, ge=1)
    min_guidance_scale: float = Field(0.0, ge=0)
    max_guidance_scale: float = Field(30.0, ge=0)
    max_seed: int = Field(2**32 - 1, ge=0)
    # A job that crashed the daemon this many times goes to failed/ instead of crash-looping.
    max_attempts: int = Field(3, ge=1)
    # The image formats (Pillow's names) a job's image may be in; no other decoder is tried.
    image_formats: list[str] = Field(default_factory=lambda: list(IMAGE_FORMATS))
    # Below this many MB free on the disk of outputs/ or of the state folder no new job is taken
    # (they wait in the inbox); 0 turns the check off.
    min_free_mb: int = Field(1024, ge=0)
    # A job still generating after this many seconds is stopped between two steps and fails; 0: no cap.
    max_job_seconds: float = Field(1800.0, ge=0)

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in RESOLUTIONS]
        if bad or not v:
            raise ValueError(f"each must be one of {', '.join(RESOLUTIONS)}")
        return v

    @field_validator("image_formats")
    @classmethod
    def _image_formats(cls, v: list[str]) -> list[str]:
        from PIL import Image  # only when the operator sets the list: Pillow's plugins load slowly

        Image.init()
        known = set(Image.OPEN) | {"HEIF"}  # HEIF: the pillow-heif plugin, registered by daemon.job.image
        out: list[str] = []
        for name in v:
            fmt = _FORMAT_ALIASES.get(name.strip().upper(), name.strip().upper())
            if fmt == "EPS":
                raise ValueError("EPS is never read: Pillow would run the external Ghostscript program on it")
            if fmt not in known:
                others = ", ".join(sorted(known - {"EPS", *IMAGE_FORMATS}))
                raise ValueError(
                    f"{name!r} is not an image format Pillow reads; use Pillow's names, such as "
                    f"{', '.join(IMAGE_FORMATS)} (others: {others})"
                )
            if fmt not in out:
                out.append(fmt)
        if not out:
            raise ValueError('must name at least one format, e.g. ["JPEG", "PNG"]')
        return out


class OutputConfig(Section):
    default_recipes: list[str] = Field(default_factory=lambda: ["poster", "h264"])
    # Finished generations that may wait for the encoder while it works on another job.
    # The GPU starts job N+1 while job N encodes; this bounds the frames held in memory
    # to those of encode_queue + 2 jobs.
    encode_queue: int = Field(1, ge=1, le=16)
    # None: the ffmpeg pinned with the imageio-ffmpeg package (the same on every machine).
    ffmpeg: Path | None = None

    @field_validator("ffmpeg", mode="before")
    @classmethod
    def _ffmpeg(cls, v: Any) -> Any:
        # Can it run at all is known here; whether it encodes H.264 is checked at start.
        if v is None or v == "":
            return None
        path = Path(v).expanduser()
        if not path.is_absolute():
            found = shutil.which(str(path)) if len(path.parts) == 1 else None
            if found is None:
                raise ValueError('must be the absolute path of an ffmpeg binary (e.g. "/usr/bin/ffmpeg")')
            path = Path(found)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ValueError(
                f"{path} is not an executable file; fix the path, or remove the key to use the ffmpeg "
                "i2vd ships"
            )
        return path
