"""The prompt model: loaded once, kept warm, writing one prompt at a time.

Only the loaded model, the tokenizer and the image processor are used (no transformers
``Processor``: Qwen3-VL's wants torchvision for videos, which this daemon never gives it); the
image tokens are expanded here exactly as the processor would. Decoding is greedy, so an image and
a prompt always give the same text, and ``i2vd prompt`` prints what a job would get.

The text written goes only into the pipeline's prompt and ``JOB.json``: never into a path, a
shell or an ffmpeg argument.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from daemon import logs
from daemon.config_service import PromptingConfig
from daemon.prompting import tiny
from daemon.prompting.placement import Placement, place
from daemon.prompting.styles import instructions, style_for

# The model sees the image at most this big (pixels): ~250 image tokens for Qwen's 32-pixel
# merged patches, enough for subject and setting, and the cost of a prompt stays bounded
# whatever size the photo is.
MAX_IMAGE_PIXELS = 512 * 512

# The chat format of the Qwen VL models (one system turn, one user turn with the image first),
# written here rather than read from the model's folder so a local copy without its template works.
CHAT_TEMPLATE = tiny.CHAT_TEMPLATE

_SPECIAL_RE = re.compile(r"<\|[^|<>]{1,40}\|>")
_SPACE_RE = re.compile(r"\s+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class PromptModelError(Exception):
    """The prompt model cannot be loaded or cannot write (the message names the fix)."""


@dataclass(frozen=True)
class Written:
    prompt: str
    seconds: float
    tokens: int


def clean(text: str, max_chars: int) -> str:
    """One line of plain text: special tokens, control characters and quotes gone, cut at a word."""
    text = _SPECIAL_RE.sub(" ", text)
    text = _CONTROL_RE.sub(" ", text)
    text = _SPACE_RE.sub(" ", text).strip().strip("\"'`").strip()
    if len(text) > max_chars:
        cut = text[: max_chars + 1]  # a space just after the limit ends a whole word
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut[:max_chars]).rstrip(" ,;:")
    return text


def model_folder(cfg: PromptingConfig, cache_dir: Path) -> str:
    """What ``from_pretrained`` is given: the tiny build's folder (built now if needed), a local
    folder, or the Hub id (looked up in ``cache_dir``, offline)."""
    if cfg.model == tiny.TINY_ID:
        return str(tiny.build_tiny(cache_dir / tiny.folder_name()))
    return cfg.model


class PromptWriter:
    """A vision-language model that writes video prompts from an image, thread-safe, kept warm."""

    def __init__(self, cfg: PromptingConfig, *, cache_dir: Path, max_chars: int, concurrent: bool = False):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.max_chars = max_chars
        # Generations run beside this process (Ray workers on the same GPUs): never move the prompt
        # model onto a GPU that may be mid-generation.
        self.concurrent = concurrent
        self.placement: Placement | None = None
        self.weight_bytes = 0
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._images: Any = None
        self._device: Any = None  # where it writes
        self.log = logs.get()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model from the cache (never the network) and place it (``placement``)."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from daemon.logs import adopt_model_libraries

        adopt_model_libraries()
        source = model_folder(self.cfg, self.cache_dir)
        kwargs: dict[str, Any] = {"cache_dir": str(self.cache_dir), "revision": self.cfg.revision}
        if not Path(source).is_dir():
            kwargs["local_files_only"] = True  # the service never downloads: fetch-model does
        gpu = self._gpu()
        started = time.monotonic()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self._images = AutoImageProcessor.from_pretrained(source, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=torch.bfloat16 if gpu is not None else torch.float32, **kwargs
            )
        except (OSError, ValueError, ImportError) as e:
            raise PromptModelError(
                f"the prompt model {self.cfg.model!r} cannot be loaded ({_first_line(e)}); run "
                '`i2vd fetch-model` to fetch it, or set [prompting] when = "never"'
            ) from e
        model.eval()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        free = None
        if gpu is not None:
            free = torch.cuda.mem_get_info(gpu)[0]
        placement = place(self.weight_bytes, free, self.cfg.gpu_reserve_mb * 1024 * 1024)
        if placement.where == "offload" and self.concurrent:
            placement = Placement(
                "cpu", placement.reason + "; generations run beside it, so it stays on the CPU"
            )
        if placement.where == "gpu":
            model.to(gpu)
        elif placement.where == "cpu" and gpu is not None:
            model.to(torch.float32)  # bfloat16 matmuls are slow on most CPUs
        self._model = model
        self._device = gpu if placement.where != "cpu" else torch.device("cpu")
        self.placement = placement
        self.log.info(
            "prompt model loaded",
            model=self.cfg.model,
            where=placement.where,
            why=placement.reason,
            weights_mb=self.weight_bytes // (1024 * 1024),
            seconds=round(time.monotonic() - started, 1),
        )

    def _gpu(self) -> Any:
        """The CUDA device to consider, or None for the CPU."""
        import torch

        device = self.cfg.device.strip().lower()
        if device == "cpu" or not torch.cuda.is_available():
            if device.startswith("cuda"):
                raise PromptModelError(
                    f'[prompting] device = {self.cfg.device!r} but no CUDA GPU is visible; set device = "cpu"'
                )
            return None
        return torch.device("cuda" if device == "auto" else device)

    def write(self, image: Image.Image, user_prompt: str | None, family: str) -> Written:
        """A prompt for ``image`` in ``family``'s style; from the user's words when given."""
        import torch

        if self._model is None:
            self.load()
        system, user = instructions(style_for(family), user_prompt)
        picture = _bounded(image)
        with self._lock:
            started = time.monotonic()
            messages = [
                {"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]},
            ]
            text = self._tokenizer.apply_chat_template(
                messages, chat_template=CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
            )
            pixels = self._images(images=[picture], return_tensors="pt")
            merge = int(getattr(self._images, "merge_size", 2))
            count = int(pixels["image_grid_thw"][0].prod()) // (merge * merge)
            text = text.replace("<|image_pad|>", "<|image_pad|>" * count, 1)
            encoded = self._tokenizer([text], return_tensors="pt")
            inputs = {**encoded, **pixels}
            offload = self.placement is not None and self.placement.where == "offload"
            try:
                if offload:
                    self._model.to(self._device)
                dtype = next(self._model.parameters()).dtype
                inputs = {
                    k: (v.to(self._device, dtype) if v.is_floating_point() else v.to(self._device))
                    for k, v in inputs.items()
                }
                with torch.inference_mode():
                    out = self._model.generate(
                        **inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False
                    )
            finally:
                if offload:
                    self._model.to("cpu")
                    torch.cuda.empty_cache()
            new = out[0, inputs["input_ids"].shape[1] :]
            raw = self._tokenizer.decode(new, skip_special_tokens=True)
            return Written(clean(raw, self.max_chars), time.monotonic() - started, int(new.numel()))

    def close(self) -> None:
        self._model = self._tokenizer = self._images = None


def _bounded(image: Image.Image) -> Image.Image:
    picture = image.convert("RGB")
    pixels = picture.width * picture.height
    if pixels > MAX_IMAGE_PIXELS:
        scale = (MAX_IMAGE_PIXELS / pixels) ** 0.5
        size = (max(32, int(picture.width * scale)), max(32, int(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BICUBIC)
    return picture


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def writer_for(settings: Any) -> PromptWriter | None:
    """The daemon's prompt writer for these ``Settings`` (not loaded yet), or None with when = "never"."""
    cfg = settings.prompting
    if cfg.when == "never":
        return None
    return PromptWriter(
        cfg,
        cache_dir=settings.model_cache_dir,
        max_chars=settings.limits.max_prompt_chars,
        concurrent=settings.cluster.backend == "ray",
    )
