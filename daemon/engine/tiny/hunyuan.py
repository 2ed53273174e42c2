"""Tiny random-weight HunyuanVideo image-to-video builds, with a tokenizer laid out like Llama 3's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from daemon.engine.tiny.i2vgenxl import write_tokenizer_files
from daemon.engine.tiny.parts import SEED


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


def build_hunyuan_i2v(condition: str) -> Any:
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
        write_tokenizer_files(Path(tok_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
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
