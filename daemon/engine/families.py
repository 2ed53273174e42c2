"""Model families: I2VGen-XL, SVD, LTX-Video, Wan 2.1 and 2.2, CogVideoX, HunyuanVideo (image-to-video).

A family is detected from the model folder's ``model_index.json`` ``_class_name`` (``[model] family``
overrides it; see ``daemon.engine.detect``). Each entry in ``FAMILIES`` is a ``Family``
(``daemon.engine.family_spec``) that says what differs between them, and nothing else:

- its diffusers pipeline class and the name of its denoiser (``unet`` or ``transformer``);
- the clip sizes and frame counts it can take, checked before any model work;
- what its pipeline call takes beyond the shared arguments (``extra_kwargs``), and the size multiple
  or the one size the loaded pipeline needs (``multiple_of``, ``one_size``);
- the precision it is published in, which ``[model] dtype = "auto"`` picks on a GPU;
- its published steps and guidance, used where neither the job, an adapter nor the config sets them;
- whether diffusers loads LoRA adapters into it, and how many denoisers take them (Wan 2.2 A14B: two).

The engine that runs any of them is ``daemon.engine.runner.DiffusersGenerator``. torch and diffusers are
imported lazily.
"""

from __future__ import annotations

from typing import Any

from daemon.engine import family_calls as calls
from daemon.engine.family_spec import Family
from daemon.engine.ltx2 import ltx2_kwargs

# Names accepted by ``[model] family`` (besides "auto"): the keys of ``FAMILIES``, nowhere else.
I2VGENXL, SVD, LTX, WAN, COGVIDEOX = "i2vgenxl", "svd", "ltx", "wan", "cogvideox"
# Wan 2.2 runs through the same diffusers pipeline class as Wan 2.1, but its models differ in what
# they take and in their published settings: A14B has two expert denoisers switched at
# ``boundary_ratio``; TI2V-5B has a 16x VAE and conditions on the image through its first latent
# frame (``expand_timesteps``).
WAN22_A14B, WAN22_TI2V = "wan22_a14b", "wan22_ti2v"
# Wan 2.1 FLF2V 14B: Wan 2.1's pipeline and layout, its image embedder trained on the CLIP features of
# a first and a last frame side by side (``pos_embed_seq_len``): every job needs both.
WAN_FLF2V = "wan_flf2v"
HUNYUAN_I2V = "hunyuan_i2v"
LTX2 = "ltx2"
HUNYUAN15_I2V = "hunyuan15_i2v"


FAMILIES: dict[str, Family] = {
    # 50 steps, guidance 9.0: ali-vilab/i2vgen-xl's model card and diffusers' I2VGenXLPipeline defaults.
    I2VGENXL: Family(
        I2VGENXL,
        "daemon.engine.i2vgenxl:DaemonI2VGenXLPipeline",
        "I2VGen-XL",
        index_names=("I2VGenXLPipeline",),
        denoiser="unet",
        size_multiple=8,
        typical_frames=16,
        gpu_dtype="float16",
        chunked_decode=True,
        step_hook="step_callback",
        default_steps=50,
        default_guidance=9.0,
        extra_kwargs=calls.i2vgenxl_kwargs,
        multiple_of=calls.unet_multiple,
    ),
    # 25 steps, guidance ramped 1.0 -> 3.0 over the frames: diffusers'
    # StableVideoDiffusionPipeline defaults, as Stability AI's model card runs it.
    SVD: Family(
        SVD,
        "StableVideoDiffusionPipeline",
        "Stable Video Diffusion",
        index_names=("StableVideoDiffusionPipeline",),
        denoiser="unet",
        takes_prompt=False,
        size_multiple=8,
        typical_frames=14,
        gpu_dtype="float16",
        chunked_decode=True,
        default_steps=25,
        default_guidance=3.0,
        extra_kwargs=calls.svd_kwargs,
        multiple_of=calls.unet_multiple,
    ),
    # 50 steps, guidance 3.0: diffusers' LTXImageToVideoPipeline defaults, Lightricks' published
    # values for LTX-Video 0.9.x (the distilled 0.9.6+ checkpoints publish 8 steps, guidance 1.0:
    # set them in [generation] for those).
    LTX: Family(
        LTX,
        "LTXImageToVideoPipeline",
        "LTX-Video",
        index_names=("LTXImageToVideoPipeline", "LTXPipeline", "LTXConditionPipeline"),
        size_multiple=32,
        frame_step=8,
        typical_frames=97,
        default_steps=50,
        default_guidance=3.0,
        takes_lora=True,
        extra_kwargs=calls.ltx_kwargs,
        multiple_of=calls.ltx_multiple,
        # A job with a last frame runs through LTXConditionPipeline on the same components.
        end_frame="conditions",
        end_frame_pipeline="LTXConditionPipeline",
        end_frame_kwargs=calls.ltx_conditions,
    ),
    # 40 steps, guidance 5.0: the Wan 2.1 authors' generate.py for image-to-video (diffusers'
    # WanImageToVideoPipeline defaults to 50 steps at the same guidance).
    WAN: Family(
        WAN,
        "WanImageToVideoPipeline",
        "Wan 2.1",
        index_names=("WanImageToVideoPipeline", "WanPipeline"),
        size_multiple=16,
        frame_step=4,
        typical_frames=81,
        float32_parts=("vae", "image_encoder"),
        default_steps=40,
        default_guidance=5.0,
        takes_lora=True,
        multiple_of=calls.wan_multiple,
    ),
    # 50 steps, guidance 5.5, 81 frames at 16 fps, 720p: Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers as its
    # model card runs it (the pipeline's 50 steps; the authors' generate.py runs non-i2v tasks at 50).
    WAN_FLF2V: Family(
        WAN_FLF2V,
        "WanImageToVideoPipeline",
        "Wan 2.1 FLF2V",
        size_multiple=16,
        frame_step=4,
        typical_frames=81,
        float32_parts=("vae", "image_encoder"),
        default_steps=50,
        default_guidance=5.5,
        takes_lora=True,
        multiple_of=calls.wan_multiple,
        end_frame="last_image",
        needs_end_frame=True,
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
        multiple_of=calls.wan_multiple,
        # No image encoder: the last frame joins the first in the VAE latent the experts see.
        end_frame="last_image",
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
        multiple_of=calls.wan_multiple,
    ),
    # 50 steps, guidance 6.0 (distilled into the model), 129 frames at 720p: Tencent's published
    # HunyuanVideo-I2V settings, as diffusers' example runs hunyuanvideo-community/HunyuanVideo-I2V
    # (the -33ch checkpoint: diffusers' example uses guidance 1.0; set it in [generation]).
    HUNYUAN_I2V: Family(
        HUNYUAN_I2V,
        "HunyuanVideoImageToVideoPipeline",
        "HunyuanVideo-I2V",
        index_names=("HunyuanVideoImageToVideoPipeline",),
        size_multiple=16,
        frame_step=4,
        typical_frames=129,
        default_steps=50,
        default_guidance=6.0,
        takes_lora=True,
        extra_kwargs=calls.hunyuan_kwargs,
        multiple_of=calls.patch_multiple,
    ),
    # 50 steps (the pipeline's default and diffusers' example), guidance 6.0 (the guider diffusers'
    # conversion script writes for the 480p and 720p I2V checkpoints; the cfg-distilled ones ship 1.0:
    # set it in [generation] for those), 121 frames (the pipeline's default). The pipeline is our
    # subclass, which takes the clip size and guidance as the others do (see daemon.engine.hunyuan15).
    HUNYUAN15_I2V: Family(
        HUNYUAN15_I2V,
        "daemon.engine.hunyuan15:DaemonHunyuanVideo15ImageToVideoPipeline",
        "HunyuanVideo 1.5",
        index_names=("HunyuanVideo15ImageToVideoPipeline",),
        size_multiple=16,
        frame_step=4,
        typical_frames=121,
        step_hook="step_callback",
        default_steps=50,
        default_guidance=6.0,
        # diffusers 0.42.1 has no First Block Cache entry for its blocks.
        cache_methods=("pyramid", "taylorseer"),
        multiple_of=calls.patch_multiple,
    ),
    # CogVideoX compresses time 4x and its VAE decodes an odd number of latent frames back to
    # 4(n-1)+1 frames (an even count comes back doubled): so 8k+1 frames, 49 as published.
    # 50 steps, guidance 6.0: diffusers' CogVideoXImageToVideoPipeline defaults, as THUDM's model
    # card runs CogVideoX-5b-I2V.
    COGVIDEOX: Family(
        COGVIDEOX,
        "CogVideoXImageToVideoPipeline",
        "CogVideoX",
        index_names=("CogVideoXImageToVideoPipeline", "CogVideoXPipeline"),
        size_multiple=16,
        frame_step=8,
        typical_frames=49,
        default_steps=50,
        default_guidance=6.0,
        takes_lora=True,
        multiple_of=calls.patch_multiple,
        one_size=calls.cogvideox_size,
    ),
    # 30 steps, guidance 3.0, 121 frames at 24 fps, 768x512: diffusers' LTX2ImageToVideoPipeline
    # defaults, as its example runs Lightricks/LTX-2 (the distilled checkpoints publish 8 steps at
    # guidance 1.0: set them in [generation] or on the adapter). Sizes in multiples of 32 (VAE 32x,
    # patch 1); the VAE compresses time 8x: 8k+1 frames. The sound it makes is dropped (engine/ltx2.py).
    LTX2: Family(
        LTX2,
        "LTX2ImageToVideoPipeline",
        "LTX-2",
        # LTX-2's published folders name its text-to-video pipeline; the image-to-video one loads them.
        index_names=("LTX2ImageToVideoPipeline", "LTX2Pipeline"),
        size_multiple=32,
        frame_step=8,
        typical_frames=121,
        default_steps=30,
        default_guidance=3.0,
        takes_lora=True,
        # diffusers 0.42.1 has no First Block Cache entry for its blocks, and Pyramid Attention
        # Broadcast mixes up its guidance passes (batch 2, then 1) and fails every guided job.
        cache_methods=("taylorseer",),
        extra_kwargs=ltx2_kwargs,
        multiple_of=calls.ltx_multiple,
    ),
}


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


def end_frame_families() -> list[str]:
    """The labels of the families that can end a clip on a chosen frame, as the table lists them."""
    return [family.label for family in FAMILIES.values() if family.end_frame is not None]


def end_frame_problem(family: Family, has_last: bool) -> str | None:
    """Why a job with (or without) a last frame cannot be made by ``family``; None when it can.

    Checked with the job's other inputs, before any model work.
    """
    if has_last and family.end_frame is None:
        return (
            f"This job asks for a clip that ends on a chosen frame (a last image beside the first), but"
            f" the model here, {family.label}, cannot take one. The models that can are:"
            f" {', '.join(end_frame_families())}. Ask the operator for one of them, or drop the image"
            " again without its last image."
        )
    if not has_last and family.needs_end_frame:
        return (
            f"The model here, {family.label}, makes clips between two images only: put the last frame"
            " beside the image as NAME.last.jpg (any image type; NAME is the image's name), then drop"
            " the files again."
        )
    return None


_END_FRAME_PIPES: dict[int, tuple[Any, Any]] = {}


def end_frame_pipe(family: Family, pipe: Any) -> Any:
    """The pipeline that makes a clip with a last frame: ``pipe`` itself, or the family's
    ``end_frame_pipeline`` built once on ``pipe``'s components (no copy of the weights: the same
    modules, with their placement, adapters and compilation)."""
    if family.end_frame_pipeline is None:
        return pipe
    held = _END_FRAME_PIPES.get(id(pipe))
    if held is None or held[0] is not pipe:
        import diffusers

        other = getattr(diffusers, family.end_frame_pipeline)(**pipe.components)
        other.set_progress_bar_config(disable=True)  # as the loaded pipeline's
        _END_FRAME_PIPES.clear()  # one model is loaded at a time: keep one
        held = _END_FRAME_PIPES[id(pipe)] = (pipe, other)
    return held[1]


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"no such model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def pipeline_class(family: Family) -> Any:
    module, _, name = family.pipeline_class.rpartition(":")
    if module:  # "module:Class": our subclass of a diffusers pipeline
        import importlib

        return getattr(importlib.import_module(module), name)
    import diffusers

    return getattr(diffusers, name)


def pipeline_multiple(family: Family, pipe: Any) -> int:
    """Width/height multiple the loaded pipeline needs (VAE downsampling x UNet levels or patches)."""
    multiple = family.multiple_of(pipe) if family.multiple_of is not None else 8
    return max(family.size_multiple, int(multiple))


def fixed_size(family: Family, pipe: Any) -> tuple[int, int] | None:
    """(width, height) for a model that can only make one clip size, else None."""
    return family.one_size(pipe) if family.one_size is not None else None


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
