"""``[model] quantize``: weight quantization of the denoiser(s) with torchao, once at load.

- ``"int8"``: int8 weight-only (``Int8WeightOnlyConfig``): half the denoiser's memory in bfloat16,
  a quarter in float32; runs on any device, the CPU included.
- ``"fp8"``: float8 weights and dynamically quantized float8 activations, per row
  (``Float8DynamicActivationFloat8WeightConfig``): FP8 tensor cores, so it needs a CUDA GPU of
  compute capability 8.9 or newer (L4, L40S, RTX 4090, H100, H200); elsewhere the start fails
  with one line saying so.

Only the denoisers' linear layers are quantized (where nearly all the weights and time are): the
text and image encoders and the VAE stay as they are, and so do LoRA layers (``lora_A`` /
``lora_B``), which stay in full precision and keep switching per job. Order at load: adapters
loaded and the always-on ones fused (into full-precision weights), then quantized, then compiled.

torchao is an optional extra (``pip install 'i2v-daemon[quantize]'``); it is imported only here.
"""

from __future__ import annotations

import logging
from typing import Any

from daemon.engine.choices import QUANTIZE_CHOICES
from daemon.engine.family_spec import Family

FP8_CAPABILITY = (8, 9)  # Ada Lovelace and Hopper: the first GPUs with FP8 tensor cores


def fp8_problem(device: Any) -> str | None:
    """Why FP8 cannot run on ``device``, in one line; None when it can."""
    import torch

    if device.type != "cuda":
        return (
            "model.quantize = 'fp8' needs a CUDA GPU with FP8 support (compute capability 8.9 or newer:"
            " L4, L40S, RTX 4090, H100, H200); this model runs on the CPU. Set model.quantize = 'int8'"
            " or 'none'."
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"model.quantize = 'fp8' needs a GPU with FP8 support (compute capability 8.9 or newer); this"
            f" {name} has {major}.{minor}. Set model.quantize = 'int8' or 'none'."
        )
    return None


def quantize_denoisers(pipe: Any, family: Family, mode: str, device: Any) -> str | None:
    """Quantize every denoiser of ``pipe`` in place; returns what is in force (for JOB.json), or None."""
    if mode == "none":
        return None
    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"model.quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {mode!r}")
    if mode == "fp8" and (problem := fp8_problem(device)) is not None:
        raise RuntimeError(problem)
    import torch

    # torchao logs each of its GPU kernel libraries that does not load on this machine, at import.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization import quantize_
    except ImportError as exc:
        raise RuntimeError(
            f"model.quantize = {mode!r} needs the torchao package: pip install 'i2v-daemon[quantize]'"
            f" ({exc})."
        ) from exc
    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        config: Any = Int8WeightOnlyConfig()
        described = "int8:weight_only"
    else:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        described = "fp8:dynamic_per_row"

    def wanted(module: Any, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and "lora_" not in fqn

    for name in family.all_denoisers:
        denoiser = getattr(pipe, name, None)
        if denoiser is None:
            continue
        # Quantized where it will run: torchao's float8 layouts are made on the GPU.
        denoiser.to(device)
        quantize_(denoiser, config, filter_fn=wanted)
    return described
