"""The built-in ``tiny`` prompt model: a random-weight Qwen3-VL built locally, with no network.

The same classes as the real ``Qwen/Qwen3-VL-2B-Instruct`` (model, byte-level BPE tokenizer, image
processor, chat template), a few hundred thousand parameters, saved with ``save_pretrained`` and
loaded back through the same ``from_pretrained`` calls the daemon makes for a real one. Its prompts
are gibberish: it exists so every test and benchmark of the plumbing runs offline on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from daemon.engine.tiny.building import build_once
from daemon.engine.tiny.i2vgenxl import byte_chars

TINY_ID = "tiny"
# Bump whenever the recipe below changes: the folder name and the marker carry it.
TINY_VERSION = 1
_SEED = 20261204

# Qwen's special tokens, as the real tokenizer names them; their ids go into the model's config.
SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_MERGES = [("t", "h"), ("Ġ", "t"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"), ("Ġ", "a")]

# The real model's chat template, for the parts the daemon uses (a system turn, one user turn of
# an image and text, the assistant's turn opened).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def folder_name() -> str:
    return f"tiny-qwen3vl-v{TINY_VERSION}"


class _Build:
    """Model and processor parts saved side by side into one folder, as a Hub repository holds them."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any) -> None:
        self.parts = (model, tokenizer, image_processor)

    def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
        model, tokenizer, image_processor = self.parts
        model.save_pretrained(folder, **kwargs)
        tokenizer.save_pretrained(folder)
        image_processor.save_pretrained(folder)
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def _tokenizer(folder: Path) -> Any:
    from transformers import Qwen2Tokenizer

    tokens = byte_chars() + [a + b for a, b in _MERGES]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    tok = Qwen2Tokenizer.from_pretrained(
        str(folder), eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    tok.add_tokens(["<|endoftext|>"], special_tokens=True)
    return tok


def _build() -> _Build:
    import torch
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = _tokenizer(Path(tok_dir))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "initializer_range": 0.2,  # wide enough that the gibberish varies from token to token
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3]},
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 32,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = Qwen3VLForConditionalGeneration(config)
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # Random weights write any byte; kept to lower-case letters, spaces and commas, their gibberish
    # reads as words and decodes as text.
    # (Byte-level BPE shows a letter as itself and a space as "Ġ".)
    readable = set("abcdefghijklmnopqrstuvwxyz,Ġ") | {a + b for a, b in _MERGES}
    model.generation_config.suppress_tokens = [
        i for tok, i in tokenizer.get_vocab().items() if tok not in readable and i not in eos
    ]
    model.generation_config.repetition_penalty = 1.3
    # Small images: a few dozen vision tokens, whatever size the photo is.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=64 * 64, max_pixels=128 * 128
    )
    return _Build(model, tokenizer, image_processor)


def build_tiny(dest: Path) -> Path:
    """Build the tiny prompt model into ``dest`` (atomically) unless a complete build is there."""
    from daemon.logs import adopt_model_libraries

    adopt_model_libraries()
    return build_once(dest, _build, {"version": TINY_VERSION, "seed": _SEED})
