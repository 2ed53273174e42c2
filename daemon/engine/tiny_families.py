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
from daemon.engine.tiny_hunyuan import build_hunyuan_i2v
from daemon.engine.tiny_hunyuan15 import build_hunyuan15_i2v
from daemon.engine.tiny_ltx2 import build_ltx2
from daemon.engine.tiny_parts import SEED, t5_encoder, t5_tokenizer
from daemon.engine.tiny_wan import build_wan, build_wan22_a14b, build_wan22_ti2v, build_wan_flf2v

MARKER = tiny.MARKER  # one marker file name for every tiny build

# Bump when a build below changes: the folder name and marker carry it, so old builds are not reused.
TINY_FAMILIES_VERSION = 4


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
        torch.manual_seed(SEED)
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


def _build_ltx() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = t5_tokenizer(128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = t5_encoder(len(tokenizer), 32)
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


def _build_cogvideox() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = t5_tokenizer(226)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = t5_encoder(len(tokenizer), 32)
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
    "tiny-wan": ("wan", build_wan),
    "tiny-wan-flf2v": ("wan_flf2v", build_wan_flf2v),
    "tiny-wan22": ("wan22_a14b", build_wan22_a14b),
    "tiny-wan22-ti2v": ("wan22_ti2v", build_wan22_ti2v),
    "tiny-cogvideox": ("cogvideox", _build_cogvideox),
    "tiny-hunyuan-i2v": ("hunyuan_i2v", lambda: build_hunyuan_i2v("token_replace")),
    "tiny-hunyuan-i2v-33ch": ("hunyuan_i2v", lambda: build_hunyuan_i2v("latent_concat")),
    "tiny-ltx2": ("ltx2", build_ltx2),
    "tiny-hunyuan15-i2v": ("hunyuan15_i2v", build_hunyuan15_i2v),
}


def folder_name(model_id: str) -> str:
    return f"{model_id}-v{TINY_FAMILIES_VERSION}"


def is_complete(folder: Path) -> bool:
    return tiny.is_complete(folder, TINY_FAMILIES_VERSION)


def build(model_id: str, dest: Path) -> Path:
    """Build tiny ``model_id`` into ``dest`` atomically unless a complete build is there; returns ``dest``."""
    if model_id not in BUILDERS:
        raise ValueError(f"no tiny build {model_id!r}; known: {', '.join(BUILDERS)}")
    marker = {"version": TINY_FAMILIES_VERSION, "seed": SEED, "model": model_id}
    return tiny.build_once(dest, BUILDERS[model_id][1], marker)


def make_random_lora(model_id: str, dest: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA adapter with random weights for tiny ``model_id``'s transformer, saved as ``dest``."""
    if model_id not in BUILDERS:
        raise ValueError(f"no tiny build {model_id!r}; known: {', '.join(BUILDERS)}")
    return random_lora_for(BUILDERS[model_id][1](), dest, seed=seed, rank=rank)


def random_lora_for(pipe: Any, dest: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA adapter with random weights for ``pipe``'s transformer, saved as ``dest`` (a .safetensors).

    Laid out as peft saves a trained one (``lora_A`` / ``lora_B`` of every attention projection,
    written by diffusers' own ``save_lora_weights``), so diffusers and peft load it as they load a
    published adapter; but random in both matrices (a fresh peft adapter has ``lora_B`` zero, which
    changes nothing): loading it changes the frames. Made from the weight shapes alone, so ``pipe``
    is left as it was and a 14B transformer is not copied. For tests and benchmarks of adapters.
    """
    import torch

    targets = ("to_q", "to_k", "to_v", "to_out.0")
    layers: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(seed)
    for name, module in pipe.transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(targets):
            continue
        out_features, in_features = module.weight.shape
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) / rank**0.5
        layers[f"{name}.lora_A.weight"] = down.to(module.weight.dtype)
        layers[f"{name}.lora_B.weight"] = up.to(module.weight.dtype)
    if not layers:
        raise ValueError(f"{type(pipe.transformer).__name__} has no attention projections named {targets}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(dest.parent, transformer_lora_layers=layers, weight_name=dest.name)
    return dest
