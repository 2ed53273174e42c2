"""The configured video model's family, without loading it: the style ``i2vd prompt`` writes in."""

from __future__ import annotations

from typing import Any


def configured_family(settings: Any) -> str:
    """``[model] family``, or the tiny build's, or the one its ``model_index.json`` names."""
    from daemon.engine import tiny_families
    from daemon.engine.detect import detect_family
    from daemon.engine.families import I2VGENXL
    from daemon.engine.load import TINY_ID

    m = settings.model
    if m.id == TINY_ID:
        return I2VGENXL if m.family == "auto" else m.family
    if m.id in tiny_families.BUILDERS:
        return tiny_families.BUILDERS[m.id][0] if m.family == "auto" else m.family
    return detect_family(m.id, family=m.family, cache_dir=settings.model_cache_dir, revision=m.revision)
