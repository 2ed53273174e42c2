"""A tiny random-weight LTX-2 image-to-video build (``tiny-ltx2``), made in code like the other tiny builds.

Every part of diffusers' ``LTX2ImageToVideoPipeline`` at toy width: the audio-video transformer, the
video VAE (32x spatial, 8x temporal like the real one, so the same size and frame rules hold), the
audio VAE and vocoder (the model makes sound with every clip; i2vd drops it), the text connectors, a
Gemma 3 text encoder and a Gemma tokenizer built from scratch (no hub). Clips are abstract noise.
"""

from __future__ import annotations

import string
from typing import Any

from daemon.engine.tiny.parts import SEED, SIGLIP_VISION

TEXT_WIDTH = 32
TEXT_LAYERS = 2


def gemma_tokenizer() -> Any:
    """A tiny Gemma (BPE) tokenizer: Gemma's specials, one piece per ASCII character and a few words."""
    from transformers import GemmaTokenizerFast

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581"]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    merges = [("\u2581", w[0]) for w in ("a", "t", "o", "b", "p", "w")]
    pieces += [a + b for a, b in merges]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return GemmaTokenizerFast(vocab=vocab, merges=merges, model_max_length=1024)


def gemma3_encoder(vocab_size: int) -> Any:
    """Gemma 3 as LTX-2 uses it: a ``Gemma3ForConditionalGeneration`` whose hidden states of every layer
    are the prompt embedding (its vision tower is there, tiny, and not used)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(SIGLIP_VISION),
        mm_tokens_per_image=4,
        boi_token_index=vocab_size - 1,
        eoi_token_index=vocab_size - 1,
        image_token_index=vocab_size - 1,
    )
    return Gemma3ForConditionalGeneration(config)


def build_ltx2() -> Any:
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = gemma_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = gemma3_encoder(len(tokenizer))
        connectors = LTX2TextConnectors(
            caption_channels=TEXT_WIDTH,
            text_proj_in_factor=TEXT_LAYERS + 1,  # every layer's hidden state, and the embeddings
            # heads x head width = the text width: the connectors keep it
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=TEXT_WIDTH // 2,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=TEXT_WIDTH // 2,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,
            rope_type="split",
        )
        transformer = LTX2VideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            audio_in_channels=4,  # audio latent channels x latent mel bins
            audio_out_channels=4,
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            num_layers=2,  # two blocks: First Block Cache needs a first and a rest
            caption_channels=TEXT_WIDTH,
            rope_double_precision=False,
            rope_type="split",
        )
        # The real VAE's layout at width 8: patch 4, then 2x down in space, time, and both twice over:
        # 32x in space, 8x in time, so sizes are multiples of 32 and clips 8k+1 frames, as published.
        vae = AutoencoderKLLTX2Video(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            decoder_inject_noise=(False, False, False, False),
            upsample_residual=(False, False, False),
            upsample_factor=(1, 1, 1),
            # The published decoder pads by reflection, which needs latents over 1 wide; the test clips
            # are one latent (32 pixels) high.
            decoder_spatial_padding_mode="zeros",
            # Set in the published config too: diffusers' default formula counts every scaling level
            # as both spatial and temporal (64x, 16x), which this layout is not.
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4,
            ch_mult=(1,),
            num_res_blocks=1,
            resolution=32,
            latent_channels=2,
            mel_bins=8,
        )
        vocoder = LTX2Vocoder(
            in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
            hidden_channels=8,
            upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=16000,
        )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
