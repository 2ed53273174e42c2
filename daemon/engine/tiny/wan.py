"""Tiny random-weight Wan builds: Wan 2.1 image-to-video, Wan 2.2 A14B (two experts) and TI2V-5B."""

from __future__ import annotations

from typing import Any

from daemon.engine.tiny.parts import SEED, t5_tokenizer


def build_wan() -> Any:
    """Wan 2.1's image-to-video layout: a CLIP image encoder beside the VAE latent of the image."""
    return _build_wan21(flf2v=False)


def build_wan_flf2v() -> Any:
    """Wan 2.1 FLF2V's layout: Wan 2.1's, with the image embedder taking the CLIP features of the first
    and the last frame side by side (``pos_embed_seq_len``: twice the encoder's tokens, 2 x (4x4 + 1))."""
    return _build_wan21(flf2v=True)


def _build_wan21(*, flf2v: bool) -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tokenizer, text_encoder = _wan_text()
        vae = _wan_vae()
        two_frames = 2 * _CLIP_TOKENS if flf2v else None
        transformer = _wan_transformer(36, 16, image_dim=4, pos_embed_seq_len=two_frames)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=4,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=16,
                patch_size=8,
            )
        )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


def _wan_text() -> tuple[Any, Any]:
    """Wan's tokenizer and a one-layer UMT5 text encoder (call inside the seeded block)."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer(512)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    return tokenizer, text_encoder


def _wan_vae() -> Any:
    """Spatial x8, time x4 like the real Wan 2.1 VAE (and Wan 2.2 A14B's)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


# The tiny CLIP encoder's tokens per image: (32 / 8)^2 patches and the class token.
_CLIP_TOKENS = (32 // 8) ** 2 + 1


def _wan_transformer(
    channels_in: int, channels_out: int, image_dim: int | None = None, pos_embed_seq_len: int | None = None
) -> Any:
    """Patch (1, 2, 2): with the x8 VAE, sizes in multiples of 16. ``image_dim``: Wan 2.1's CLIP input;
    ``pos_embed_seq_len``: FLF2V's two frames of it."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels_in,
        out_channels=channels_out,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,  # two blocks: First Block Cache needs a first and a rest
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,  # as the real model: room for 1024p clips
        image_dim=image_dim,
        pos_embed_seq_len=pos_embed_seq_len,
    )


def build_wan22_a14b() -> Any:
    """Wan 2.2 A14B's layout: no image encoder, two expert transformers switched at boundary_ratio.

    The image reaches the model only through its VAE latent (16 noise + 16 image + 4 mask channels).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tokenizer, text_encoder = _wan_text()
        vae = _wan_vae()
        transformer = _wan_transformer(36, 16)  # the high-noise expert
        transformer_2 = _wan_transformer(36, 16)  # the low-noise expert
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=transformer,
        transformer_2=transformer_2,
        # The published 0.9 puts every one of a handful of steps on the first expert; 0.5 splits two
        # steps between both, so a test sees each expert work.
        boundary_ratio=0.5,
    )


def build_wan22_ti2v() -> Any:
    """Wan 2.2 TI2V-5B's layout: a 16x VAE of 48 latent channels (patchified 2x2 inside), one transformer,
    the image as the first latent frame (``expand_timesteps``): sizes in multiples of 32."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tokenizer, text_encoder = _wan_text()
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
        transformer = _wan_transformer(48, 48)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=transformer,
        expand_timesteps=True,
    )
