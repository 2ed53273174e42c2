"""The generator a model id names: ``stub`` runs no model; every other id is a diffusers pipeline.

Its own module, above both ``load`` (which finds a model's files) and ``runner`` (which loads and
runs them), so that neither of those imports the other's caller.
"""

from __future__ import annotations

from pathlib import Path

from daemon.engine.interface import Generator
from daemon.engine.load import model_kind
from daemon.engine.options import EngineOptions
from daemon.engine.stub import StubGenerator


def load_generator(
    model_id: str,
    *,
    revision: str | None,
    device: str,
    dtype: str,
    cache_dir: Path,
    options: EngineOptions | None = None,
    family: str = "auto",
) -> Generator:
    """``stub`` / ``stub:SECONDS`` -> StubGenerator; anything else (``tiny``, ``tiny-wan``, a folder, a
    Hub id) -> ``DiffusersGenerator``.

    ``options``: the ``[model]`` speed and memory settings and the adapters
    (``EngineOptions.from_config(settings.model, settings.loras)``); None means the defaults.
    ``family`` (``[model] family``): "auto" detects the model family from ``model_index.json``.
    """
    if model_kind(model_id) == "stub":
        _, _, seconds = model_id.partition(":")
        try:
            return StubGenerator(float(seconds) if seconds else 0.0)
        except ValueError:
            raise ValueError(
                f"model.id {model_id!r}: write 'stub' or 'stub:SECONDS' (e.g. stub:2.5)."
            ) from None
    from daemon.engine.runner import DiffusersGenerator

    return DiffusersGenerator(
        model_id,
        revision=revision,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        options=options,
        family=family,
    )
