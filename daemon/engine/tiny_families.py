"""Tiny random-weight builds of the other model families (``tiny-svd``, ``tiny-ltx``, ...), made in code.

Like ``daemon.engine.tiny`` (the I2VGen-XL ``tiny``): real diffusers pipeline and component classes, saved
with ``save_pretrained`` into ``cache_dir/<name>-v<VERSION>`` atomically and loaded back with
``from_pretrained``; no hub, every tokenizer built from scratch. Clips are abstract noise.
"""

from __future__ import annotations

import tempfile
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


def _wan_text() -> tuple[Any, Any]:
    """Wan's tokenizer and a one-layer UMT5 text encoder (call inside the seeded block)."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer(512)
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


def _wan_transformer(channels_in: int, channels_out: int) -> Any:
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
        rope_max_seq_len=1024,
    )


def _build_wan22_a14b() -> Any:
    """Wan 2.2 A14B's layout: no image encoder, two expert transformers switched at boundary_ratio.

    The image reaches the model only through its VAE latent (16 noise + 16 image + 4 mask channels).
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        tokenizer, text_encoder = _wan_text()
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
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


def _build_wan22_ti2v() -> Any:
    """Wan 2.2 TI2V-5B's layout: a 16x VAE of 48 latent channels (patchified 2x2 inside), one transformer,
    the image as the first latent frame (``expand_timesteps``): sizes in multiples of 32."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
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


def _llama3_tokenizer() -> Any:
    """A word-level tokenizer laid out like Llama 3's for HunyuanVideo-I2V's prompt template.

    The pipeline's template hard-codes Llama 3 positions: ``<|begin_of_text|>`` first, the
    ``<image>`` placeholder at index 5, three ``<|end_header_id|>`` markers, the user's prompt near
    token 103. One token per word of the template (and per character otherwise) gives the same
    layout: ``<image>`` at 5, the prompt at 101, so the real template and its cropping run as they
    do with the real tokenizer.
    """
    import re
    import string

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaTokenizerFast

    specials = ["<pad>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>"]
    specials += ["<|end_header_id|>", "<|eot_id|>", "<image>", "\n\n"]
    words = sorted(set(re.findall(r"[A-Za-z]+", DEFAULT_PROMPT_TEMPLATE["template"])))
    chars = [c for c in string.ascii_letters + string.digits + string.punctuation if c not in words]
    vocab = {token: i for i, token in enumerate(specials + words + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[A-Za-z]+|[^A-Za-z]"), "isolated")]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=1024,
    )


def _build_hunyuan_i2v(condition: str) -> Any:
    """HunyuanVideo-I2V's layout: a LLaVA (Llama + CLIP ViT-L/14-336, 576 image tokens) and a CLIP text
    encoder, a dual-stream transformer, a causal 3D VAE (spatial x8, time x4; patch 2: sizes in
    multiples of 16). ``condition``: "token_replace" (guidance distilled into the model, as
    hunyuanvideo-community/HunyuanVideo-I2V) or "latent_concat" (HunyuanVideo-I2V-33ch)."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tokenizer = _llama3_tokenizer()
    with tempfile.TemporaryDirectory() as tok_dir:
        tiny._write_tokenizer_files(Path(tok_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        text = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_hidden_layers=3,  # the pipeline takes the hidden states 2 layers before the last
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        # 336 / 14 = 24: 576 image tokens, the count the pipeline's template expects.
        vision = CLIPVisionConfig(
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            image_size=336,
            patch_size=14,
        )
        text_encoder = LlavaForConditionalGeneration(
            LlavaConfig(
                vision_config=vision,
                text_config=text,
                image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer_2),
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=8,
                bos_token_id=tokenizer_2.bos_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                pad_token_id=tokenizer_2.pad_token_id,
            )
        )
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=9 if condition == "latent_concat" else 4,  # noise + image latent + mask
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=condition == "token_replace",
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
            image_condition_type=condition,
        )
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            # The real VAE attends over every latent pixel of the clip in its middle block; on a CPU
            # at 512p that alone would take most of a test's time.
            mid_block_add_attention=False,
        )
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
    )


# model id -> (family, builder)
BUILDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "tiny-svd": ("svd", _build_svd),
    "tiny-ltx": ("ltx", _build_ltx),
    "tiny-wan": ("wan", _build_wan),
    "tiny-wan22": ("wan22_a14b", _build_wan22_a14b),
    "tiny-wan22-ti2v": ("wan22_ti2v", _build_wan22_ti2v),
    "tiny-cogvideox": ("cogvideox", _build_cogvideox),
    "tiny-hunyuan-i2v": ("hunyuan_i2v", lambda: _build_hunyuan_i2v("token_replace")),
    "tiny-hunyuan-i2v-33ch": ("hunyuan_i2v", lambda: _build_hunyuan_i2v("latent_concat")),
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
