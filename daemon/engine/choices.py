"""The ``[model]`` choices, defined once and free of heavy imports: ``daemon.config`` types its
settings with them and the engine checks against the same tuples."""

from __future__ import annotations

import re
from typing import Literal, get_args

# The one definition of each choice: ``[model]`` in daemon.config is typed with these.
Attention = Literal["auto", "sdpa", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "xformers", "eager"]
Offload = Literal["none", "model", "sequential", "group"]
CompileMode = Literal["default", "max-autotune-no-cudagraphs"]
CompileScope = Literal["regional", "full"]
Cache = Literal["none", "first_block", "pyramid", "taylorseer"]
OomRung = Literal["lower_resolution", "fewer_frames", "cpu_offload"]
ATTENTION_CHOICES: tuple[str, ...] = get_args(Attention)
OFFLOAD_CHOICES: tuple[str, ...] = get_args(Offload)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
COMPILE_SCOPES: tuple[str, ...] = get_args(CompileScope)
CACHE_CHOICES: tuple[str, ...] = get_args(Cache)
# ``[model] quantize``: daemon.engine.quantize.
Quantize = Literal["none", "int8", "fp8"]
QUANTIZE_CHOICES: tuple[str, ...] = get_args(Quantize)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device: str) -> str:
    """``model.device`` if it is one the daemon knows, else ValueError saying what is allowed."""
    if not _DEVICE_RE.match(device.strip().lower()):
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
