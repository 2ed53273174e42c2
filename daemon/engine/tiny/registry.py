"""The tiny random-weight builds, one entry a model id: ``tiny`` (I2VGen-XL), ``tiny-svd``, ``tiny-wan``, ...

Each is made in code from real diffusers pipeline and component classes, saved with
``save_pretrained`` into ``cache_dir/<folder>`` atomically (``building.build_once``) and loaded
back with ``from_pretrained``; no hub, every tokenizer built from scratch. Clips are abstract
noise. The model loader and ``i2vd fetch-model`` ask only this table: a new tiny build is one
entry here and one module beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.engine.tiny import building, i2vgenxl
from daemon.engine.tiny.cogvideox import build_cogvideox
from daemon.engine.tiny.hunyuan import build_hunyuan_i2v
from daemon.engine.tiny.hunyuan15 import build_hunyuan15_i2v
from daemon.engine.tiny.ltx import build_ltx
from daemon.engine.tiny.ltx2 import build_ltx2
from daemon.engine.tiny.parts import SEED
from daemon.engine.tiny.svd import build_svd
from daemon.engine.tiny.wan import build_wan, build_wan22_a14b, build_wan22_ti2v, build_wan_flf2v

MARKER = building.MARKER  # one marker file name for every tiny build

# Bump when a build of the families below changes: the folder name and marker carry it, so old
# builds are not reused. (``tiny`` has its own, ``i2vgenxl.TINY_VERSION``.)
TINY_FAMILIES_VERSION = 4


@dataclass(frozen=True)
class TinyBuild:
    """One tiny build: its family, how it is made, and the recipe version its folder carries."""

    family: str
    make: Callable[[], Any]  # -> the diffusers pipeline, random weights
    version: int = TINY_FAMILIES_VERSION
    folder: str | None = None  # the folder under the cache; None: "<id>-v<version>"
    seed: int = SEED


BUILDS: dict[str, TinyBuild] = {
    "tiny": TinyBuild(
        "i2vgenxl", i2vgenxl.build_i2vgenxl, i2vgenxl.TINY_VERSION, i2vgenxl.FOLDER, i2vgenxl.SEED
    ),
    "tiny-svd": TinyBuild("svd", build_svd),
    "tiny-ltx": TinyBuild("ltx", build_ltx),
    "tiny-wan": TinyBuild("wan", build_wan),
    "tiny-wan-flf2v": TinyBuild("wan_flf2v", build_wan_flf2v),
    "tiny-wan22": TinyBuild("wan22_a14b", build_wan22_a14b),
    "tiny-wan22-ti2v": TinyBuild("wan22_ti2v", build_wan22_ti2v),
    "tiny-cogvideox": TinyBuild("cogvideox", build_cogvideox),
    "tiny-hunyuan-i2v": TinyBuild("hunyuan_i2v", lambda: build_hunyuan_i2v("token_replace")),
    "tiny-hunyuan-i2v-33ch": TinyBuild("hunyuan_i2v", lambda: build_hunyuan_i2v("latent_concat")),
    "tiny-ltx2": TinyBuild("ltx2", build_ltx2),
    "tiny-hunyuan15-i2v": TinyBuild("hunyuan15_i2v", build_hunyuan15_i2v),
}


def is_tiny(model_id: str) -> bool:
    return model_id in BUILDS


def _entry(model_id: str) -> TinyBuild:
    if model_id not in BUILDS:
        raise ValueError(f"no tiny build {model_id!r}; known: {', '.join(BUILDS)}")
    return BUILDS[model_id]


def folder_name(model_id: str) -> str:
    entry = _entry(model_id)
    return entry.folder or f"{model_id}-v{entry.version}"


def recorded_version(model_id: str) -> str:
    """The recipe version a job's record names as the model's revision ("v4")."""
    return f"v{_entry(model_id).version}"


def make_pipeline(model_id: str) -> Any:
    """Tiny ``model_id`` in memory, not saved (benchmarks, random adapters)."""
    return _entry(model_id).make()


def build_into(model_id: str, dest: Path) -> Path:
    """Build tiny ``model_id`` into ``dest`` atomically unless a complete build is there; returns ``dest``."""
    entry = _entry(model_id)
    marker = {"version": entry.version, "seed": entry.seed, "model": model_id}
    return building.build_once(dest, entry.make, marker)


def build(model_id: str, cache_dir: Path) -> Path:
    """Tiny ``model_id`` built (once) in ``cache_dir``; returns its folder."""
    return build_into(model_id, Path(cache_dir) / folder_name(model_id))
