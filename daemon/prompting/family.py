"""The configured video model's family, without loading it: the style ``i2vd prompt`` writes in."""

from __future__ import annotations

from typing import Any


def configured_family(settings: Any) -> str:
    """``[model] family``, or the tiny build's, or the one its ``model_index.json`` names."""
    from daemon.engine.detect import detect_family
    from daemon.engine.tiny import registry

    m = settings.model
    if registry.is_tiny(m.id):
        return registry.BUILDS[m.id].family if m.family == "auto" else m.family
    return detect_family(m.id, family=m.family, cache_dir=settings.model_cache_dir, revision=m.revision)
