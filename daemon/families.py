"""Model families besides I2VGen-XL: Stable Video Diffusion, LTX-Video, Wan and CogVideoX (image-to-video).

A family is detected from the model folder's ``model_index.json`` ``_class_name`` (``[model] family``
overrides it). Each family knows its diffusers pipeline class, the clip sizes and frame counts it can
take (``check``, called before any model work, raises ``GenerationError`` naming the key and the values
that work), its ``size_multiple``, and how a ``GenerationRequest`` maps onto its pipeline call.

``FamilyGenerator`` runs such a pipeline behind the daemon's ``Generator`` protocol. torch and
diffusers are imported lazily.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import logs
from .errors import GenerationError

# Names accepted by ``[model] family``.
I2VGENXL, SVD, LTX, WAN, COGVIDEOX = "i2vgenxl", "svd", "ltx", "wan", "cogvideox"
FAMILY_CHOICES = ("auto", I2VGENXL, SVD, LTX, WAN, COGVIDEOX)

# model_index.json ``_class_name`` -> family.
CLASS_NAMES = {
    "I2VGenXLPipeline": I2VGENXL,
    "StableVideoDiffusionPipeline": SVD,
    "LTXImageToVideoPipeline": LTX,
    "LTXPipeline": LTX,
    "LTXConditionPipeline": LTX,
    "WanImageToVideoPipeline": WAN,
    "WanPipeline": WAN,
    "CogVideoXImageToVideoPipeline": COGVIDEOX,
    "CogVideoXPipeline": COGVIDEOX,
}


def family_from_index(index: dict[str, Any]) -> str:
    """The family of a parsed ``model_index.json``; ValueError when it is not one i2vd can run."""
    name = index.get("_class_name")
    if name not in CLASS_NAMES:
        known = ", ".join(sorted(CLASS_NAMES))
        raise ValueError(
            f"model_index.json names the pipeline {name!r}, which i2vd cannot run; it runs {known}."
            " If the folder is one of these under another name, set [model] family."
        )
    return CLASS_NAMES[name]


def detect_family(
    model_id: str,
    *,
    family: str = "auto",
    cache_dir: Path | None = None,
    revision: str | None = None,
) -> str:
    """``family`` unless it is "auto"; else read from the model's ``model_index.json``.

    ``model_id`` is a local folder or a Hub id already in ``cache_dir`` (never downloaded here). A
    model whose index cannot be found is taken as I2VGen-XL, the daemon's default model.
    """
    family = family.strip().lower()
    if family not in FAMILY_CHOICES:
        raise ValueError(f"model.family must be one of {', '.join(FAMILY_CHOICES)}, not {family!r}.")
    if family != "auto":
        return family
    index_path: Path | None = None
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        index_path = folder / "model_index.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(
                model_id,
                "model_index.json",
                cache_dir=str(cache_dir) if cache_dir else None,
                revision=revision,
            )
            if isinstance(found, str):
                index_path = Path(found)
        except Exception:  # not a valid repo id, no cache: fall back below
            index_path = None
    if index_path is None or not index_path.is_file():
        return I2VGENXL
    return family_from_index(json.loads(index_path.read_text(encoding="utf-8")))


def _frames_message(label: str, key: str, value: int, step: int, example: int) -> str:
    ok = ", ".join(str(step * k + 1) for k in range(1, 5))
    return (
        f"{key} = {value} does not suit {label}: it makes clips of {step}k+1 frames"
        f" ({ok}, ..., e.g. {example}). Pick one of those."
    )


@dataclass(frozen=True)
class Family:
    """What differs between model families (see the module docstring)."""

    name: str
    pipeline_class: str  # in diffusers
    label: str
    takes_prompt: bool = True
    size_multiple: int = 8  # least: the pipeline's own multiple may be larger (see FamilyGenerator)
    frame_step: int = 1  # num_frames must be frame_step*k + 1 (1: any count)
    typical_frames: int = 16

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
        if req.num_frames < 1 or (self.frame_step > 1 and (req.num_frames - 1) % self.frame_step):
            if self.frame_step > 1:
                msg = _frames_message(
                    self.label, "num_frames", req.num_frames, self.frame_step, self.typical_frames
                )
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
        if not 0 <= req.seed < 2**64:
            raise GenerationError(
                f"seed = {req.seed} is out of range: use a whole number from 0 to {2**64 - 1}."
            )

    def call_kwargs(self, req: Any, generator: Any) -> dict[str, Any]:
        """The pipeline call for ``req`` (frames come back as numpy floats in [0, 1])."""
        common: dict[str, Any] = dict(
            image=req.image.convert("RGB"),
            height=req.height,
            width=req.width,
            num_frames=req.num_frames,
            num_inference_steps=req.steps,
            generator=generator,
            output_type="np",
        )
        if self.name == SVD:
            # No text: SVD is conditioned on the image only. Guidance ramps from 1 to guidance_scale
            # over the frames; fps is a conditioning input (the pipeline subtracts 1 itself).
            return {
                **common,
                "min_guidance_scale": min(1.0, req.guidance_scale),
                "max_guidance_scale": req.guidance_scale,
                "fps": req.fps,
                "decode_chunk_size": min(8, req.num_frames),
            }
        common.update(prompt=req.prompt, negative_prompt=req.negative_prompt or None)
        common["guidance_scale"] = req.guidance_scale
        if self.name == LTX:
            common["frame_rate"] = req.fps
        return common


FAMILIES: dict[str, Family] = {
    SVD: Family(
        SVD,
        "StableVideoDiffusionPipeline",
        "Stable Video Diffusion",
        takes_prompt=False,
        size_multiple=8,
        frame_step=1,
        typical_frames=14,
    ),
    LTX: Family(
        LTX, "LTXImageToVideoPipeline", "LTX-Video", size_multiple=32, frame_step=8, typical_frames=97
    ),
    WAN: Family(WAN, "WanImageToVideoPipeline", "Wan", size_multiple=16, frame_step=4, typical_frames=81),
    # CogVideoX compresses time 4x and its VAE decodes an odd number of latent frames back to
    # 4(n-1)+1 frames (an even count comes back doubled): so 8k+1 frames, 49 as published.
    COGVIDEOX: Family(
        COGVIDEOX,
        "CogVideoXImageToVideoPipeline",
        "CogVideoX",
        size_multiple=16,
        frame_step=8,
        typical_frames=49,
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"no such model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


class FamilyGenerator:
    """A non-I2VGen-XL diffusers pipeline, loaded once and kept warm; one ``generate`` at a time.

    ``last_run`` describes each run (size, frames, family, whether the prompt was used).
    """

    def __init__(
        self,
        family: str,
        source: str | Path,
        *,
        model_id: str,
        revision: str | None,
        device: Any,
        dtype: Any,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import diffusers
        import torch

        self.family = get_family(family)
        cls = getattr(diffusers, self.family.pipeline_class)
        _ftfy_fallback(cls)
        pipe = cls.from_pretrained(source, dtype=dtype, **(load_kwargs or {}))
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        self._pipe = pipe
        self._torch = torch
        self._torch_device = device
        self.device = str(device)
        self.model_id = model_id
        self.revision = revision
        self.size_multiple = max(self.family.size_multiple, _pipeline_multiple(self.family.name, pipe))
        self.last_run: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._log = logs.get()

    def check(self, req: Any) -> None:
        self.family.check(req, self.size_multiple)
        if req.image.size != (req.width, req.height):
            raise GenerationError(
                f"The image was prepared at {req.image.size[0]}x{req.image.size[1]} but the clip is"
                f" {req.width}x{req.height}; this is a bug in i2vd, please report it."
            )

    def warm_up(self, **_: object) -> float:
        return 0.0

    def generate(self, req: Any, on_step: Any = None) -> np.ndarray:
        self.check(req)  # before any model work
        torch, device = self._torch, self._torch_device
        if not self.family.takes_prompt:
            self._log.info(
                f"{self.family.label} takes no prompt: the clip is made from the image alone;"
                " the prompt and negative prompt are not used",
                family=self.family.name,
            )
        total = req.steps

        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, total)
            return {}

        t0 = time.monotonic()
        with self._lock:
            self.last_run = None
            cuda = [device.index or 0] if getattr(device, "type", "cpu") == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(req.seed)  # anything sampled from the global RNG is seeded too
                generator = torch.Generator(device=device).manual_seed(req.seed)
                out = self._pipe(**self.family.call_kwargs(req, generator), callback_on_step_end=callback)
        video = np.asarray(out.frames[0], dtype=np.float32)
        expected = (req.num_frames, req.height, req.width, 3)
        if video.shape != expected:
            raise GenerationError(
                f"The model returned frames shaped {video.shape}, expected {expected}; this is a bug in"
                " i2vd, please report it."
            )
        if not np.isfinite(video).all():
            raise GenerationError(
                "The model produced invalid pixels (not-a-number): ask the operator to set model.dtype to"
                " bfloat16 or float32."
            )
        self.last_run = {
            "ok": True,
            "family": self.family.name,
            "width": req.width,
            "height": req.height,
            "num_frames": req.num_frames,
            "prompt_used": self.family.takes_prompt,
            "seconds": round(time.monotonic() - t0, 3),
        }
        return (video * 255).round().clip(0, 255).astype(np.uint8)


def _pipeline_multiple(family: str, pipe: Any) -> int:
    """Width/height multiple the loaded pipeline needs (VAE downsampling x UNet levels or patches)."""
    if family == SVD:
        return int(pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1))
    if family == LTX:
        return int(pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size)
    if family == WAN:
        return int(pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1])
    if family == COGVIDEOX:
        return int(pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size)
    return 8


def _ftfy_fallback(cls: Any) -> None:
    """Wan's prompt cleaning calls ``ftfy.fix_text`` but diffusers imports ftfy only if installed.

    Without it every Wan job would fail with NameError; the prompt is used as written instead.
    """
    import sys

    module = sys.modules.get(cls.__module__)
    if module is None or hasattr(module, "ftfy") or not hasattr(module, "basic_clean"):
        return
    import types

    module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]
