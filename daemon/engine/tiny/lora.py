"""Random-weight LoRA adapters for the tiny builds (tests, benchmarks, ``scripts/tiny_lora.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.engine.tiny.registry import make_pipeline


def make_random_lora(model_id: str, dest: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA adapter with random weights for tiny ``model_id``'s transformer, saved as ``dest``."""
    return random_lora_for(make_pipeline(model_id), dest, seed=seed, rank=rank)


def random_lora_for(pipe: Any, dest: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA adapter with random weights for ``pipe``'s transformer, saved as ``dest`` (a .safetensors).

    Laid out as peft saves a trained one (``lora_A`` / ``lora_B`` of every attention projection,
    written by diffusers' own ``save_lora_weights``), so diffusers and peft load it as they load a
    published adapter; but random in both matrices (a fresh peft adapter has ``lora_B`` zero, which
    changes nothing): loading it changes the frames. Made from the weight shapes alone, so ``pipe``
    is left as it was and a 14B transformer is not copied. For tests and benchmarks of adapters.
    """
    import torch

    targets = ("to_q", "to_k", "to_v", "to_out.0")
    layers: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(seed)
    for name, module in pipe.transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(targets):
            continue
        out_features, in_features = module.weight.shape
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) / rank**0.5
        layers[f"{name}.lora_A.weight"] = down.to(module.weight.dtype)
        layers[f"{name}.lora_B.weight"] = up.to(module.weight.dtype)
    if not layers:
        raise ValueError(f"{type(pipe.transformer).__name__} has no attention projections named {targets}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(dest.parent, transformer_lora_layers=layers, weight_name=dest.name)
    return dest
