"""Tiny random-weight builds of the other model families (``tiny-svd``, ``tiny-ltx``, ...), made in code.

Like ``daemon.engine.tiny`` (the I2VGen-XL ``tiny``): real diffusers pipeline and component classes, saved
with ``save_pretrained`` into ``cache_dir/<name>-v<VERSION>`` atomically and loaded back with
``from_pretrained``; no hub, every tokenizer built from scratch. Clips are abstract noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.engine import tiny

MARKER = tiny.MARKER  # one marker file name for every tiny build

# Bump when a build below changes: the folder name and marker carry it, so old builds are not reused.
TINY_FAMILIES_VERSION = 3
_SEED = 20240102


def _build_svd() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        unet = UNetSpatioTemporalConditionModel(
            sample_size=16,
            in_channels=8,
            out_channels=4,
            # Attention on the coarser level only: at the full latent size it made a 512p job take a
            # minute on two cores.
            down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
            up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            num_attention_heads=(2, 4),
            # fps, motion bucket and noise augmentation, each embedded at addition_time_embed_dim
            projection_class_embeddings_input_dim=3 * 32,
            addition_time_embed_dim=32,
            num_frames=8,
        )
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),  # GroupNorm(32) is fixed in this VAE
            layers_per_block=1,
            latent_channels=4,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=224,  # the pipeline resizes every image to 224x224 itself
                patch_size=32,
                projection_dim=32,
            )
        )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )


def _t5_tokenizer(max_length: int) -> Any:
    """A tiny T5 (Unigram) tokenizer built in code: specials, one piece per ASCII character, a few words.

    Any text tokenizes (characters outside the table become ``<unk>``); pad 0, eos 1, unk 2 as in T5.
    """
    import string

    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    words = ["a", "the", "of", "and", "to", "in", "on", "with", "boat", "paper", "water", "sky", "light"]
    vocab += [("\u2581" + w, -3.0) for w in words]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5_encoder(vocab_size: int, width: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _build_ltx() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = _t5_tokenizer(128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        text_encoder = _t5_encoder(len(tokenizer), 32)
        transformer = LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            caption_channels=32,
        )
        # Spatial x8 (three 2x levels) like a real VAE would need 32 with patch 1 x4 ... here 8; time x8.
        vae = AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False,
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return LTXImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _build_wan() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    tokenizer = _t5_tokenizer(512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
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
        # Spatial x8, time x4 like the real Wan VAE; patch (1, 2, 2): sizes in multiples of 16.
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=36,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,  # as the real model: room for 1024p clips
            image_dim=4,
        )
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


def _build_cogvideox() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = _t5_tokenizer(226)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        text_encoder = _t5_encoder(len(tokenizer), 32)
        # Rotary positions (no learned ones): any size that is a multiple of 16 works.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,  # rotary splits it 4/6/6 over time/height/width: must stay even
            in_channels=8,  # noise + image latents
            out_channels=4,
            time_embed_dim=4,
            text_embed_dim=32,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            sample_width=8,
            sample_height=8,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,
            use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=False,
        )
        # Spatial x8, time x4 like the real VAE; patch 2: sizes in multiples of 16.
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        )
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )


# model id -> (family, builder)
BUILDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "tiny-svd": ("svd", _build_svd),
    "tiny-ltx": ("ltx", _build_ltx),
    "tiny-wan": ("wan", _build_wan),
    "tiny-cogvideox": ("cogvideox", _build_cogvideox),
}


def folder_name(model_id: str) -> str:
    return f"{model_id}-v{TINY_FAMILIES_VERSION}"


def is_complete(folder: Path) -> bool:
    return tiny.is_complete(folder, TINY_FAMILIES_VERSION)


def build(model_id: str, dest: Path) -> Path:
    """Build tiny ``model_id`` into ``dest`` atomically unless a complete build is there; returns ``dest``."""
    if model_id not in BUILDERS:
        raise ValueError(f"no tiny build {model_id!r}; known: {', '.join(BUILDERS)}")
    marker = {"version": TINY_FAMILIES_VERSION, "seed": _SEED, "model": model_id}
    return tiny.build_once(dest, BUILDERS[model_id][1], marker)
