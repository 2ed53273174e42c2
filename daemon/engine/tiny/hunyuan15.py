"""A tiny random-weight HunyuanVideo 1.5 image-to-video build (``tiny-hunyuan15-i2v``), made in code.

The published model's parts at toy widths: a Qwen2.5-VL text model with a Qwen2 (byte-level BPE)
tokenizer and chat template, a ByT5 encoder for quoted text, a SigLIP image encoder, the 16x VAE, the
transformer and a classifier-free guider. Every tokenizer is built here; nothing comes from the hub.
"""

from __future__ import annotations

from typing import Any

from daemon.engine.tiny.parts import SEED, SIGLIP_VISION

# Qwen2.5's chat template reduced to what the pipeline renders: text messages and the generation prompt.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _qwen2_tokenizer(system_message: str) -> Any:
    """A Qwen2 tokenizer with a vocab of the 256 byte pieces plus one merged token per word of the
    pipeline's system message (the prompt itself is mostly spelled out in bytes).

    The pipeline crops the first 108 tokens, the template before the prompt with the real tokenizer.
    Here that template is 123 tokens (whitespace and punctuation are pieces of their own), so 15 of
    them stay before the prompt: the same code runs, on a slightly different crop.
    """
    from transformers import Qwen2Tokenizer

    from daemon.engine.tiny.i2vgenxl import byte_chars

    chars = byte_chars()
    bare = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(chars)}, merges=[])
    pieces: list[str] = []
    for text in (system_message, "system\n", "user\n", "assistant\n"):
        for piece, _span in bare.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text):
            if len(piece) > 1 and piece not in pieces:
                pieces.append(piece)
    # Each word is merged left to right, one character at a time: a chain of merges per word.
    merges: list[tuple[str, str]] = []
    tokens = list(chars)
    known = set(tokens)
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            merged = piece[:end]
            if merged not in known:
                merges.append((piece[: end - 1], piece[end - 1]))
                tokens.append(merged)
                known.add(merged)
    vocab = {token: i for i, token in enumerate(tokens + _SPECIALS)}
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=2048)
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def build_hunyuan15_i2v() -> Any:
    """HunyuanVideo 1.5 I2V's layout: VAE spatial x16, time x4, 32 -> 4 latent channels; transformer
    patch 1 (so sizes in multiples of 16) taking noise + image latent + mask (2 x 4 + 1 channels)."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    tokenizer = _qwen2_tokenizer(_system_message())
    tokenizer_2 = ByT5Tokenizer()  # bytes: no vocab file
    latent = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=3,  # the pipeline takes the hidden states 2 layers before the last
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=2048,
                # Multimodal rotary positions split over time/height/width: halves of head_dim 8.
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e6},
                bos_token_id=None,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
            )
        )
        image_encoder = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_VISION))
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * latent + 1,
            out_channels=latent,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=16,
            text_embed_2_dim=16,
            image_embed_dim=16,
            rope_axes_dim=(2, 4, 4),
            target_size=64,
        )
        vae = AutoencoderKLHunyuanVideo15(
            in_channels=3,
            out_channels=3,
            latent_channels=latent,
            # The levels that also halve time need 8 channels (their downsample folds 2x2x2 into
            # channels); the full-size ones get 2 and 4 and no resnets but the decoder's one: a CPU's
            # 3D convolutions are slowest there, and a 512p clip still decodes in seconds.
            block_out_channels=(2, 4, 8, 8, 8),
            layers_per_block=0,
            spatial_compression_ratio=16,
            temporal_compression_ratio=4,
        )
    return HunyuanVideo15ImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        # Shift 5 and guidance 6: what diffusers' conversion writes for the 480p image-to-video model.
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
        image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )


def _system_message() -> str:
    """The system message the pipeline puts before every prompt (set in its ``__init__``)."""
    import inspect

    from diffusers import HunyuanVideo15ImageToVideoPipeline

    default = inspect.signature(HunyuanVideo15ImageToVideoPipeline._get_mllm_prompt_embeds).parameters
    return str(default["system_message"].default)
