"""What the tiny builds of the transformer families share: the seed, a T5-style tokenizer and
text encoder made from scratch (no hub), a tiny SigLIP vision tower."""

from __future__ import annotations

from typing import Any

SEED = 20240102

# A one-layer SigLIP vision tower: HunyuanVideo 1.5's image encoder, and LTX-2's Gemma 3's vision half.
SIGLIP_VISION: dict[str, Any] = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=16,
)


def t5_tokenizer(max_length: int) -> Any:
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


def t5_encoder(vocab_size: int, width: int) -> Any:
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
