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
    WAN_FLF2V,
    Family,
)

# model_index.json ``_class_name`` -> family, from the table.
CLASS_NAMES = {index_name: f.name for f in FAMILIES.values() for index_name in f.index_names}
FAMILY_CHOICES = ("auto", *FAMILIES)


def family_from_index(index: dict[str, Any], transformer: dict[str, Any] | None = None) -> str:
    """The family of a parsed ``model_index.json`` (and, for Wan, its ``transformer/config.json``
    when at hand); ValueError when it is not one i2vd can run."""
    name = index.get("_class_name")
    if name not in CLASS_NAMES:
        known = ", ".join(sorted(CLASS_NAMES))
        raise ValueError(
            f"model_index.json names the pipeline {name!r}, which i2vd cannot run; it runs {known}."
            " If the folder is one of these under another name, set [model] family."
        )
    family = CLASS_NAMES[name]
    if family == WAN:
        return wan_generation(index, transformer)
    return family


def _getter(config: Any) -> Any:
    return config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)


def wan_generation(config: Any, transformer: Any = None) -> str:
    """Wan 2.1, Wan 2.1 FLF2V, Wan 2.2 A14B or Wan 2.2 TI2V-5B, from a model index or a pipeline's
    config (and its transformer's, which tells FLF2V from Wan 2.1's image-to-video).

    Wan-AI/Wan2.2-I2V-A14B-Diffusers sets ``boundary_ratio`` (and lists ``transformer_2``);
    Wan-AI/Wan2.2-TI2V-5B-Diffusers sets ``expand_timesteps``; Wan 2.1 sets neither, and the
    transformer of Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers sets ``pos_embed_seq_len`` (the image
    features of two frames side by side).
    """
    get = _getter(config)
    if get("boundary_ratio") is not None:
        return WAN22_A14B
    if get("expand_timesteps"):
        return WAN22_TI2V
    if transformer is not None and _getter(transformer)("pos_embed_seq_len") is not None:
        return WAN_FLF2V
    return WAN


def _transformer_config(index_path: Path, model_id: str, cache_dir: Path | None, revision: str | None) -> Any:
    """The ``transformer/config.json`` beside a model index (a folder's, or the Hub cache's), or None."""
    path: Path | None = index_path.parent / "transformer" / "config.json"
    if path is not None and not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(
                model_id,
                "transformer/config.json",
                cache_dir=str(cache_dir) if cache_dir else None,
                revision=revision,
            )
            path = Path(found) if isinstance(found, str) else None
        except Exception:  # not a repo id: a folder without one
            path = None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if CLASS_NAMES.get(index.get("_class_name")) != WAN:
        return family_from_index(index)
    return family_from_index(index, _transformer_config(index_path, model_id, cache_dir, revision))


def family_of_pipeline(pipe: Any) -> Family:
    """The family of a pipeline built in memory (benchmarks, tests), from its class."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in CLASS_NAMES:
            name = CLASS_NAMES[cls.__name__]
            transformer = getattr(getattr(pipe, "transformer", None), "config", None)
            return FAMILIES[wan_generation(pipe.config, transformer) if name == WAN else name]
    raise ValueError(f"i2vd cannot run a {type(pipe).__name__}")
