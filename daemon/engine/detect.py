"""Which family a model is: from its ``model_index.json`` (a folder or the Hub cache), from
``[model] family``, or from a pipeline built in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.engine.families import (
    FAMILIES,
    I2VGENXL,
    WAN,
    WAN22_A14B,
    WAN22_TI2V,
    Family,
)

# model_index.json ``_class_name`` -> family, from the table.
CLASS_NAMES = {index_name: f.name for f in FAMILIES.values() for index_name in f.index_names}
FAMILY_CHOICES = ("auto", *FAMILIES)


def family_from_index(index: dict[str, Any]) -> str:
    """The family of a parsed ``model_index.json``; ValueError when it is not one i2vd can run."""
    name = index.get("_class_name")
    if name not in CLASS_NAMES:
        known = ", ".join(sorted(CLASS_NAMES))
        raise ValueError(
            f"model_index.json names the pipeline {name!r}, which i2vd cannot run; it runs {known}."
            " If the folder is one of these under another name, set [model] family."
        )
    family = CLASS_NAMES[name]
    if family == WAN:
        return wan_generation(index)
    return family


def wan_generation(config: Any) -> str:
    """Wan 2.1, Wan 2.2 A14B or Wan 2.2 TI2V-5B, from a model index or a pipeline's config.

    Wan-AI/Wan2.2-I2V-A14B-Diffusers sets ``boundary_ratio`` (and lists ``transformer_2``);
    Wan-AI/Wan2.2-TI2V-5B-Diffusers sets ``expand_timesteps``; Wan 2.1 sets neither.
    """
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("boundary_ratio") is not None:
        return WAN22_A14B
    if get("expand_timesteps"):
        return WAN22_TI2V
    return WAN


def detect_family(
    model_id: str,
    *,
    family: str = "auto",
    cache_dir: Path | None = None,
    revision: str | None = None,
) -> str:
    """``family`` unless it is "auto"; else read from the model's ``model_index.json``.

    ``model_id`` is a local folder or a Hub id already in ``cache_dir`` (never downloaded here). A
    model whose index cannot be found is taken as I2VGen-XL, the daemon's default model.
    """
    family = family.strip().lower()
    if family not in FAMILY_CHOICES:
        raise ValueError(f"model.family must be one of {', '.join(FAMILY_CHOICES)}, not {family!r}.")
    if family != "auto":
        return family
    index_path: Path | None = None
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        index_path = folder / "model_index.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(
                model_id,
                "model_index.json",
                cache_dir=str(cache_dir) if cache_dir else None,
                revision=revision,
            )
            if isinstance(found, str):
                index_path = Path(found)
        except Exception:  # not a valid repo id, no cache: fall back below
            index_path = None
    if index_path is None or not index_path.is_file():
        return I2VGENXL
    return family_from_index(json.loads(index_path.read_text(encoding="utf-8")))


def family_of_pipeline(pipe: Any) -> Family:
    """The family of a pipeline built in memory (benchmarks, tests), from its class."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in CLASS_NAMES:
            name = CLASS_NAMES[cls.__name__]
            return FAMILIES[wan_generation(pipe.config) if name == WAN else name]
    raise ValueError(f"i2vd cannot run a {type(pipe).__name__}")
