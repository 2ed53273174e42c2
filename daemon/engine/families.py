"""Model families: I2VGen-XL, SVD, LTX-Video, Wan 2.1 and 2.2, CogVideoX, HunyuanVideo (image-to-video).

A family is detected from the model folder's ``model_index.json`` ``_class_name`` (``[model] family``
overrides it). Each ``Family`` knows what differs between them, and nothing else:

- its diffusers pipeline class and the name of its denoiser (``unet`` or ``transformer``);
- the clip sizes and frame counts it can take: ``check`` runs before any model work and raises a
  ``GenerationError`` naming the key and the values that work; ``fit_frames`` gives the nearest
  frame count it can take (for the warm-up and the out-of-memory ladder);
- how a ``GenerationRequest`` maps onto its pipeline call (``call_kwargs``), progress included;
- the precision it is published in, which ``[model] dtype = "auto"`` picks on a GPU;
- its published steps and guidance, used where neither the job, an adapter nor the config sets them;
- whether diffusers loads LoRA adapters into it, and how many denoisers take them (Wan 2.2 A14B: two).

The engine that runs any of them is ``daemon.engine.runner.DiffusersGenerator``. torch and diffusers are
imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.errors import GenerationError

# Names accepted by ``[model] family``.
I2VGENXL, SVD, LTX, WAN, COGVIDEOX = "i2vgenxl", "svd", "ltx", "wan", "cogvideox"
# Wan 2.2 runs through the same diffusers pipeline class as Wan 2.1, but its models differ in what
# they take and in their published settings: A14B has two expert denoisers switched at
# ``boundary_ratio``; TI2V-5B has a 16x VAE and conditions on the image through its first latent
# frame (``expand_timesteps``).
WAN22_A14B, WAN22_TI2V = "wan22_a14b", "wan22_ti2v"
HUNYUAN_I2V = "hunyuan_i2v"

StepCallback = Callable[[int, int], None]

def _frames_message(label: str, value: int, step: int, example: int) -> str:
    ok = ", ".join(str(step * k + 1) for k in range(1, 5))
    return (
        f"num_frames = {value} does not suit {label}: it makes clips of {step}k+1 frames"
        f" ({ok}, ..., e.g. {example}). Pick one of those."
    )


@dataclass(frozen=True)
class Family:
    """What differs between model families (see the module docstring)."""

    name: str
    pipeline_class: str  # in diffusers (I2VGen-XL: our subclass in daemon.engine.i2vgenxl)
    label: str
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
    ) -> dict[str, Any]:
        """The pipeline call for ``req`` at this size (frames come back as numpy floats in [0, 1]).

        ``pipe``: the loaded pipeline, for a family whose checkpoints differ in how they are called
        (HunyuanVideo-I2V: see ``_hunyuan_kwargs``).

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
        if self.name == SVD:
            # No text: SVD is conditioned on the image only. Guidance ramps from 1 to guidance_scale
            # over the frames; fps is a conditioning input (the pipeline subtracts 1 itself).
            kwargs.update(
                min_guidance_scale=min(1.0, req.guidance_scale),
                max_guidance_scale=req.guidance_scale,
                fps=req.fps,
            )
            return kwargs
        kwargs.update(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt or None,
            guidance_scale=req.guidance_scale,
        )
        if self.name == I2VGENXL:
            kwargs["target_fps"] = req.fps
        elif self.name == HUNYUAN_I2V:
            kwargs.update(_hunyuan_kwargs(req, pipe, num_frames))
        elif self.name == LTX:
            kwargs["frame_rate"] = req.fps
            # LTX-Video 0.9.1+ decodes with timestep conditioning; these are the values its authors
            # publish (the pipeline ignores them for a VAE without it, such as 0.9.0's).
            kwargs.update(decode_timestep=0.05, decode_noise_scale=0.025)
        return kwargs


FAMILIES: dict[str, Family] = {
    # 50 steps, guidance 9.0: ali-vilab/i2vgen-xl's model card and diffusers' I2VGenXLPipeline defaults.
    I2VGENXL: Family(
        I2VGENXL,
        "DaemonI2VGenXLPipeline",
        "I2VGen-XL",
        denoiser="unet",
        size_multiple=8,
        typical_frames=16,
        gpu_dtype="float16",
        chunked_decode=True,
        step_hook="step_callback",
        default_steps=50,
        default_guidance=9.0,
    ),
    # 25 steps, guidance ramped 1.0 -> 3.0 over the frames: diffusers'
    # StableVideoDiffusionPipeline defaults, as Stability AI's model card runs it.
    SVD: Family(
        SVD,
        "StableVideoDiffusionPipeline",
        "Stable Video Diffusion",
        denoiser="unet",
        takes_prompt=False,
        size_multiple=8,
        typical_frames=14,
        gpu_dtype="float16",
        chunked_decode=True,
        default_steps=25,
        default_guidance=3.0,
    ),
    # 50 steps, guidance 3.0: diffusers' LTXImageToVideoPipeline defaults, Lightricks' published
    # values for LTX-Video 0.9.x (the distilled 0.9.6+ checkpoints publish 8 steps, guidance 1.0:
    # set them in [generation] for those).
    LTX: Family(
        LTX,
        "LTXImageToVideoPipeline",
        "LTX-Video",
        size_multiple=32,
        frame_step=8,
        typical_frames=97,
        default_steps=50,
        default_guidance=3.0,
        takes_lora=True,
    ),
    # 40 steps, guidance 5.0: the Wan 2.1 authors' generate.py for image-to-video (diffusers'
    # WanImageToVideoPipeline defaults to 50 steps at the same guidance).
    WAN: Family(
        WAN,
        "WanImageToVideoPipeline",
        "Wan 2.1",
        size_multiple=16,
        frame_step=4,
        typical_frames=81,
        float32_parts=("vae", "image_encoder"),
        default_steps=40,
        default_guidance=5.0,
        takes_lora=True,
    ),
    # 40 steps, guidance 3.5 for both experts, boundary 0.9: the Wan 2.2 authors' I2V-A14B config
    # (the boundary comes from the model's own model_index.json).
    WAN22_A14B: Family(
        WAN22_A14B,
        "WanImageToVideoPipeline",
        "Wan 2.2 A14B",
        size_multiple=16,
        frame_step=4,
        typical_frames=81,
        float32_parts=("vae",),
        default_steps=40,
        default_guidance=3.5,
        takes_lora=True,
        denoisers=("transformer", "transformer_2"),
    ),
    # 50 steps, guidance 5.0, 121 frames at 24 fps: the Wan 2.2 authors' TI2V-5B config. Its VAE
    # compresses 16x and the transformer patches 2x2: sizes are multiples of 32.
    WAN22_TI2V: Family(
        WAN22_TI2V,
        "WanImageToVideoPipeline",
        "Wan 2.2 TI2V-5B",
        size_multiple=32,
        frame_step=4,
        typical_frames=121,
        float32_parts=("vae",),
        default_steps=50,
        default_guidance=5.0,
        takes_lora=True,
    ),
    # 50 steps, guidance 6.0 (distilled into the model), 129 frames at 720p: Tencent's published
    # HunyuanVideo-I2V settings, as diffusers' example runs hunyuanvideo-community/HunyuanVideo-I2V
    # (the -33ch checkpoint: diffusers' example uses guidance 1.0; set it in [generation]).
    HUNYUAN_I2V: Family(
        HUNYUAN_I2V,
        "HunyuanVideoImageToVideoPipeline",
        "HunyuanVideo-I2V",
        size_multiple=16,
        frame_step=4,
        typical_frames=129,
        default_steps=50,
        default_guidance=6.0,
        takes_lora=True,
    ),
    # CogVideoX compresses time 4x and its VAE decodes an odd number of latent frames back to
    # 4(n-1)+1 frames (an even count comes back doubled): so 8k+1 frames, 49 as published.
    # 50 steps, guidance 6.0: diffusers' CogVideoXImageToVideoPipeline defaults, as THUDM's model
    # card runs CogVideoX-5b-I2V.
    COGVIDEOX: Family(
        COGVIDEOX,
        "CogVideoXImageToVideoPipeline",
        "CogVideoX",
        size_multiple=16,
        frame_step=8,
        typical_frames=49,
        default_steps=50,
        default_guidance=6.0,
        takes_lora=True,
    ),
}

WAN_FAMILIES = (WAN, WAN22_A14B, WAN22_TI2V)


def _hunyuan_kwargs(req: Any, pipe: Any, num_frames: int) -> dict[str, Any]:
    """HunyuanVideo-I2V's two published checkpoints take guidance and frames differently.

    hunyuanvideo-community/HunyuanVideo-I2V ("token_replace") has guidance distilled into the model:
    ``guidance_scale`` is an input of the transformer, one pass per step. HunyuanVideo-I2V-33ch
    ("latent_concat") has none: guidance is classifier-free (``true_cfg_scale``, with the negative
    prompt), and its pipeline drops the first 4 decoded frames, so it is asked for 4 more.
    """
    config = pipe.transformer.config if pipe is not None else None
    if config is None or config.guidance_embeds:
        return {"guidance_scale": req.guidance_scale, "true_cfg_scale": 1.0}
    extra = 4 if config.image_condition_type == "latent_concat" else 0
    return {"guidance_scale": 1.0, "true_cfg_scale": req.guidance_scale, "num_frames": num_frames + extra}


def defaults_problem(family: Family | None, num_frames: int) -> str | None:
    """Why ``[generation] num_frames`` cannot be the default for this model, or None when it can.

    Checked at start: a default the model cannot take would fail every job that does not set it.
    """
    if family is None or family.frames_ok(num_frames):
        return None
    return (
        f"[generation] num_frames = {num_frames} does not suit {family.label}, which makes clips of"
        f" {family.frame_step}k+1 frames: set it to one of those, e.g. {family.typical_frames} (and"
        " [limits] max_num_frames at least as high)."
    )


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"no such model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def pipeline_class(family: Family) -> Any:
    if family.name == I2VGENXL:
        from daemon.engine.i2vgenxl import DaemonI2VGenXLPipeline

        return DaemonI2VGenXLPipeline
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def pipeline_multiple(family: Family, pipe: Any) -> int:
    """Width/height multiple the loaded pipeline needs (VAE downsampling x UNet levels or patches)."""
    if family.uses_unet:
        multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)
    elif family.name == LTX:
        multiple = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
    elif family.name in WAN_FAMILIES:
        multiple = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    elif family.name in (COGVIDEOX, HUNYUAN_I2V):
        multiple = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size
    else:
        multiple = 8
    return max(family.size_multiple, int(multiple))


def fixed_size(family: Family, pipe: Any) -> tuple[int, int] | None:
    """(width, height) for a model that can only make one clip size, else None.

    CogVideoX 1.0 (CogVideoX-5b-I2V) has learned position embeddings for its training size, 720x480,
    and nothing else fits them; CogVideoX 1.5 uses rotary positions and takes any size.
    """
    if family.name != COGVIDEOX:
        return None
    config = pipe.transformer.config
    if not getattr(config, "use_learned_positional_embeddings", False):
        return None
    scale = pipe.vae_scale_factor_spatial
    return int(config.sample_width * scale), int(config.sample_height * scale)


def ftfy_fallback(cls: Any) -> None:
    """Wan's prompt cleaning calls ``ftfy.fix_text`` but diffusers imports ftfy only if installed.

    ftfy is a dependency, but a hand-made environment may lack it; without it every Wan job would
    fail with NameError, so the prompt is then used as written instead.
    """
    import sys

    module = sys.modules.get(cls.__module__)
    if module is None or hasattr(module, "ftfy") or not hasattr(module, "basic_clean"):
        return
    import types

    module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]
