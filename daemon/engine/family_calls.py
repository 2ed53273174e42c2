"""What each family's pipeline call takes beyond the shared arguments, and the sizes its pipeline needs.

The ``extra_kwargs``, ``multiple_of`` and ``one_size`` of the entries in ``families.FAMILIES``.
torch and diffusers are imported lazily.
"""

from __future__ import annotations

from typing import Any


def i2vgenxl_kwargs(req: Any, _pipe: Any, _num_frames: int) -> dict[str, Any]:
    return {"target_fps": req.fps}


def svd_kwargs(req: Any, _pipe: Any, _num_frames: int) -> dict[str, Any]:
    # No text: SVD is conditioned on the image only. Guidance ramps from 1 to guidance_scale over the
    # frames; fps is a conditioning input (the pipeline subtracts 1 itself).
    return {
        "min_guidance_scale": min(1.0, req.guidance_scale),
        "max_guidance_scale": req.guidance_scale,
        "fps": req.fps,
    }


def ltx_kwargs(req: Any, _pipe: Any, _num_frames: int) -> dict[str, Any]:
    # LTX-Video 0.9.1+ decodes with timestep conditioning; these are the values its authors publish
    # (the pipeline ignores them for a VAE without it, such as 0.9.0's).
    return {"frame_rate": req.fps, "decode_timestep": 0.05, "decode_noise_scale": 0.025}


def hunyuan_kwargs(req: Any, pipe: Any, num_frames: int) -> dict[str, Any]:
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


def ltx_conditions(first: Any, last: Any, num_frames: int) -> dict[str, Any]:
    """LTX-Video's condition pipeline: the first frame at index 0, the last at the clip's last frame.

    As ``conditions``, not ``image=[...]`` with ``frame_index=[...]``: given lists of images without a
    list of videos, diffusers 0.42.1's LTXConditionPipeline keeps the first condition only.
    """
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    return {
        "image": None,
        "conditions": [
            LTXVideoCondition(image=first, frame_index=0),
            LTXVideoCondition(image=last, frame_index=num_frames - 1),
        ],
    }


# Width/height multiples: the VAE's spatial downsampling times the denoiser's levels or patch size.
def unet_multiple(pipe: Any) -> int:
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)


def ltx_multiple(pipe: Any) -> int:
    return pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size


def wan_multiple(pipe: Any) -> int:
    return pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]


def patch_multiple(pipe: Any) -> int:
    return pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size


def cogvideox_size(pipe: Any) -> tuple[int, int] | None:
    """CogVideoX 1.0 (CogVideoX-5b-I2V) has learned position embeddings for its training size, 720x480,
    and nothing else fits them; CogVideoX 1.5 uses rotary positions and takes any size."""
    config = pipe.transformer.config
    if not getattr(config, "use_learned_positional_embeddings", False):
        return None
    scale = pipe.vae_scale_factor_spatial
    return int(config.sample_width * scale), int(config.sample_height * scale)
