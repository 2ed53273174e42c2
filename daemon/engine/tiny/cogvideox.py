"""A tiny random-weight CogVideoX (``tiny-cogvideox``)."""

from __future__ import annotations

from typing import Any

from daemon.engine.tiny.parts import SEED, t5_encoder, t5_tokenizer


def build_cogvideox() -> Any:
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
