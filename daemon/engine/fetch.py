"""Getting the model onto the machine before the daemon needs it (``i2vd fetch-model``).

The daemon itself never decides to download: with ``HF_HUB_OFFLINE=1`` (what the systemd unit
should set) loading a model that is not in the cache fails at once, naming it. This module is the
deliberate step that fills the cache:

- a Hub id (``ali-vilab/i2vgen-xl``): only the files the pipeline loads, and for half precision
  only the ``fp16`` weight files (about half the download), into ``model.cache_dir``;
- ``tiny`` and the other tiny builds (``tiny-wan``, ...): built locally (no network);
- a local folder: checked to hold a diffusers pipeline (``model_index.json``);
- the configured LoRA adapters (``[loras.NAME]``, ``fetch_adapters``): Hub ones downloaded (the one
  file ``weight_name`` names), local files checked.

torch and diffusers are imported lazily, as in ``daemon.engine.runner``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from daemon.engine.adapters import AdapterSpec
from daemon.engine.tiny import registry as tiny


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def fetch_model(
    model_id: str,
    *,
    revision: str | None = None,
    cache_dir: Path,
    dtype: str = "auto",
    device: str = "auto",
) -> Path:
    """Make ``model_id`` loadable offline; returns the folder it now lives in.

    ``dtype`` and ``device`` are the ``[model]`` settings: they decide whether the float16 files are
    the ones to fetch ("auto" resolves as the daemon will: float16 when a CUDA GPU is used).
    Raises RuntimeError with a readable reason (offline, unknown model, no such revision, ...).
    """
    from daemon.engine.stub import STUB_ID
    from daemon.logs import adopt_model_libraries

    if tiny.is_tiny(model_id):
        adopt_model_libraries()  # no "Writing model shards" bars or deprecation notices
        return tiny.build(model_id, Path(cache_dir))
    if model_id == STUB_ID or model_id.startswith(STUB_ID + ":"):
        raise RuntimeError(f"model.id {model_id!r} is the stand-in generator: there is nothing to fetch.")
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise RuntimeError(f"{folder} is a folder but holds no diffusers pipeline (no model_index.json).")
        return folder
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1:
        raise RuntimeError(f"model.id {model_id!r} is neither a Hugging Face id (owner/name) nor a folder.")
    if _offline():
        raise RuntimeError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded. Run the command with HF_HUB_OFFLINE=0"
            " (the daemon itself can keep it set)."
        )

    import torch
    from diffusers import DiffusionPipeline

    from daemon.engine.load import resolve_dtype, weights_variant

    adopt_model_libraries()  # library notices through our log; the download's own progress bars stay

    # As the daemon will resolve it, without requiring the GPU to be there now (fetching may be
    # done on another machine, or before the driver is installed).
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    variant = weights_variant(resolve_dtype(dtype, torch.device("cuda" if cuda else "cpu")))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {"revision": revision, "cache_dir": str(cache_dir)}
    try:
        try:
            path = DiffusionPipeline.download(model_id, variant=variant, **kwargs)
        except ValueError as exc:  # the repository has no files of that variant: take the plain ones
            if variant is None or "variant" not in str(exc):
                raise
            path = DiffusionPipeline.download(model_id, **kwargs)
    except Exception as exc:
        raise RuntimeError(
            f"Could not download {model_id!r} (revision {revision or 'main'}): {_reason(exc)}"
        ) from exc
    return Path(path)


def fetch_adapters(adapters: Iterable[AdapterSpec], *, cache_dir: Path) -> list[Path]:
    """Make every configured LoRA adapter loadable offline: Hub ones downloaded into ``cache_dir``
    (the one file named by ``weight_name``), local files checked. Returns the files."""
    files: list[Path] = []
    for spec in adapters:
        what = f"LoRA adapter {spec.name!r} ({spec.id})"
        if spec.is_file:
            if not Path(spec.id).is_file():
                raise RuntimeError(f"{what}: no such file; fix [loras.{spec.name}] id.")
            files.append(Path(spec.id))
            continue
        if _offline():
            raise RuntimeError(
                f"HF_HUB_OFFLINE is set, so {what} cannot be downloaded. Run the command with"
                " HF_HUB_OFFLINE=0."
            )
        from huggingface_hub import hf_hub_download

        assert spec.weight_name  # the config requires it for a Hub id
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        try:
            path = hf_hub_download(spec.id, spec.weight_name, cache_dir=str(cache_dir))
        except Exception as exc:
            raise RuntimeError(f"Could not download {what}: {_reason(exc)}") from exc
        files.append(Path(path))
    return files


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line: the root cause, since diffusers' own message for an unreachable
    Hub ends "check out the root cause in the stacktrace above", and the command prints no stack."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    unreachable = next((e for e in chain if _is_connection_error(e)), None)
    if unreachable is not None:
        return (
            f"the Hugging Face Hub cannot be reached from this machine ({_first_line(unreachable)}). "
            "Check the network and any proxy (HTTPS_PROXY), or fetch on a machine that can reach it "
            "and copy the cache folder here."
        )
    return _first_line(exc) if "stacktrace above" not in str(exc) else _first_line(chain[-1])


def _is_connection_error(exc: BaseException) -> bool:
    # requests' and httpx's connection and timeout errors, and the socket errors under them.
    name = type(exc).__name__
    return isinstance(exc, ConnectionError | TimeoutError) or "Connect" in name or "Timeout" in name


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
