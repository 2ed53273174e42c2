"""The built-in ``tiny`` model: a random-weight I2VGen-XL built locally, with no network.

It goes through the same diffusers code path as the real ``ali-vilab/i2vgen-xl`` (the same
pipeline class, component classes, ``save_pretrained`` / ``from_pretrained`` round trip), only
every component is a few thousand parameters, so the daemon, its tests and benchmarks can run a
whole job on a laptop CPU in seconds. Its clips are abstract noise.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# Bump whenever the recipe below changes: the cache folder name and the marker carry it, so an
# old build on disk is rebuilt instead of silently reused.
TINY_VERSION = 1
FOLDER = f"tiny-i2vgenxl-v{TINY_VERSION}"  # under the model cache

SEED = 20240101
_MAX_TOKENS = 77  # CLIP's context length; the pipeline pads every prompt to it
_HIDDEN = 32  # text width = image embedding width = UNet cross-attention width, as in the real model

# A handful of merges so the tokenizer really is BPE (not just bytes); every merge result is in the vocab.
_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("e", "r"),
    ("o", "n"),
    ("o", "f</w>"),
    ("t", "o</w>"),
]


def byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: one printable character per byte value, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt laid out like CLIP's: bytes, bytes ending a word, merges, specials.

    Every byte has a token, so any unicode prompt tokenizes without unknown pieces or errors.
    """
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")


def build_i2vgenxl():  # -> I2VGenXLPipeline (imported lazily: torch/diffusers are slow to import)
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    with tempfile.TemporaryDirectory() as tok_dir:
        write_tokenizer_files(Path(tok_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=_MAX_TOKENS)

    # fork_rng: seed for a reproducible build without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_HIDDEN,
                intermediate_size=2 * _HIDDEN,
                num_hidden_layers=2,  # >= 2 so the penultimate layer (clip_skip=1) differs from the last
                num_attention_heads=2,
                max_position_embeddings=_MAX_TOKENS,
                projection_dim=_HIDDEN,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=_HIDDEN,
                intermediate_size=2 * _HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
                projection_dim=_HIDDEN,  # image embeddings join the text context: same width
            )
        )
        # Spatial attention only at the lowest of three levels (16x16 for a 64x64 latent, i.e. 512p):
        # attention over a full-resolution latent costs ~O(pixels^2) and would dominate the CPU time.
        # Three levels -> width and height must be multiples of 8 * 2**2 = 32.
        unet = I2VGenXLUNet(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock3D", "DownBlock3D", "CrossAttnDownBlock3D"),
            up_block_types=("CrossAttnUpBlock3D", "UpBlock3D", "UpBlock3D"),
            block_out_channels=(16, 16, 32),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=_HIDDEN,
            attention_head_dim=4,
        )
        # Four levels like the real VAE, so latents are 1/8 of the frame: a 512p clip denoises a
        # 64x64 latent, not a 512x512 one. Narrow channels keep the full-resolution convs cheap.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(4, 8, 8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
    # The real model's scheduler settings (v-prediction, zero-terminal-SNR cosine schedule).
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        clip_sample=False,
        timestep_spacing="leading",
    )
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=scheduler,
    )
