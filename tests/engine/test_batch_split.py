"""Attention run in parts of the batch: the same numbers as one call, and wired into the UNet families."""

from __future__ import annotations

from typing import Any

import helpers
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from daemon.engine import batch_split
from daemon.engine.batch_split import BatchSplit
from daemon.engine.runner import DiffusersGenerator


class Counting:
    """The real processor, counting its calls and the largest batch it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.largest = inner, 0, 0

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.largest = max(self.largest, hidden_states.shape[0])
        return self.inner(attn, hidden_states, *args, **kwargs)


@pytest.mark.parametrize("cross", [False, True])
def test_a_batch_over_the_limit_is_run_in_parts_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch, cross: bool
) -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6 if cross else None, heads=2, dim_head=4)
    hidden = torch.randn(10, 5, 8)
    encoder = torch.randn(10, 3, 6) if cross else None
    whole = AttnProcessor2_0()(attn, hidden, encoder)
    counting = Counting(AttnProcessor2_0())
    monkeypatch.setattr(batch_split, "MAX_BATCH", 3)
    parts = BatchSplit(counting)(attn, hidden, encoder_hidden_states=encoder)
    assert counting.calls == 4 and counting.largest == 3
    torch.testing.assert_close(parts, whole)


def test_a_batch_within_the_limit_is_one_call() -> None:
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    counting = Counting(AttnProcessor2_0())
    BatchSplit(counting)(attn, torch.randn(10, 5, 8))
    assert counting.calls == 1 and counting.largest == 10


def test_the_unet_families_split_large_batches_and_make_the_same_clip(
    monkeypatch: pytest.MonkeyPatch, tiny_generator: DiffusersGenerator
) -> None:
    unet = tiny_generator._pipe.unet
    assert unet.attn_processors and all(isinstance(p, BatchSplit) for p in unet.attn_processors.values())
    whole = tiny_generator.generate(helpers.request()).frames
    # The tiny clip's temporal attention has 2 x (96/8) x (64/8) = 192 sequences: split into 4s.
    monkeypatch.setattr(batch_split, "MAX_BATCH", 4)
    parts = tiny_generator.generate(helpers.request()).frames
    assert np.abs(parts.astype(int) - whole.astype(int)).max() <= 1
