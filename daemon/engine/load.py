"""Which model an id names and where its files are: ``stub``, the ``tiny`` builds, a folder or a Hub id.

``daemon.engine.generator`` turns an id into a loaded generator with these.

The daemon never downloads: a Hub id loads only from the cache that ``i2vd fetch-model``
(``daemon.engine.fetch``) fills ahead of time, so a missing model fails fast with the command
to run. torch and diffusers are imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from daemon.engine.choices import check_device
from daemon.engine.detect import detect_family
from daemon.engine.families import Family
from daemon.engine.stub import STUB_ID
from daemon.engine.tiny import registry as tiny

if TYPE_CHECKING:
    import torch

# Model ids that never touch the Hub.

ModelKind = Literal["stub", "tiny", "folder", "hub"]


def model_kind(model_id: str) -> ModelKind:
    """What ``model.id`` names: the stand-in, a built-in tiny build, a local folder or a Hub id."""
    if model_id == STUB_ID or model_id.startswith(STUB_ID + ":"):
        return "stub"
    if tiny.is_tiny(model_id):
        return "tiny"
    looks_like_path = model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1  # Hub: owner/name
    if looks_like_path or Path(model_id).expanduser().is_dir():
        return "folder"
    return "hub"


_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def device_summary(device: str) -> tuple[bool, str]:
    """For ``i2vd check``: whether ``model.device`` can be had here, and the device in words."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return False, f"model.device is {device!r} but no CUDA GPU is visible to torch"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return True, f"{torch.cuda.get_device_name()} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    return True, f"cpu ({os.cpu_count()} cores; no CUDA GPU visible)"


def gpu_name(device: str) -> str:
    """The name of the CUDA GPU ``device`` names ("cuda:1")."""
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def resolve_device(device: str) -> torch.device:
    import torch

    name = device.strip().lower()
    try:
        check_device(name)
    except ValueError as e:
        raise ValueError(f"model.device {e}, not {device!r}.") from None
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise RuntimeError(
                f"model.device is {device!r} but PyTorch sees no usable CUDA GPU here (torch"
                f" {torch.__version__}, {build}). Check the NVIDIA driver and the PyTorch install,"
                " or set model.device = 'cpu'."
            )
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"model.device is {device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)"
                f" (cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device, family: Family | None = None) -> torch.dtype:
    """``model.dtype`` as a torch dtype; "auto" is float32 on a CPU and the family's own on a GPU."""
    import torch

    name = dtype.strip().lower()
    if name == "auto":
        if device.type != "cuda":
            # CPUs are slow or inexact at half precision.
            return torch.float32
        # What the weights are published in: float16 for the UNets (halves the memory), bfloat16 for
        # the transformers, where float16 overflows; bfloat16 needs an Ampere or newer GPU.
        wanted = family.gpu_dtype if family is not None else "float16"
        if wanted == "bfloat16" and not torch.cuda.is_bf16_supported():
            wanted = "float16"
        return getattr(torch, wanted)
    if name not in _DTYPE_NAMES:
        raise ValueError(f"model.dtype must be 'auto', 'float16', 'bfloat16' or 'float32', not {dtype!r}.")
    return getattr(torch, _DTYPE_NAMES[name])


def component_dtypes(family: Family, dtype: torch.dtype, asked: str, device: torch.device) -> Any:
    """The ``dtype`` argument of ``from_pretrained``: one dtype, or per component for "auto" on a GPU.

    Wan's VAE and image encoder run in float32 in the examples its authors and diffusers publish;
    both are small beside the 14B transformer.
    """
    import torch

    if asked.strip().lower() != "auto" or device.type != "cuda" or not family.float32_parts:
        return dtype
    return {"default": dtype, **dict.fromkeys(family.float32_parts, torch.float32)}


def weights_variant(dtype: torch.dtype) -> str | None:
    """The Hub file variant to load for ``dtype``: ``fp16`` files (half the download) for half precision.

    ``ali-vilab/i2vgen-xl`` publishes ``*.fp16.safetensors`` beside the float32 files; bfloat16 is
    made from them too (fp16 -> bf16 loses nothing that matters for inference).
    """
    import torch

    return "fp16" if dtype in (torch.float16, torch.bfloat16) else None


def from_pretrained_variant(cls: Any, source: str | Path, variant: str | None, kwargs: dict[str, Any]) -> Any:
    """Load, preferring the ``variant`` files (fp16: half the size) and falling back to the plain ones."""
    if variant is not None:
        try:
            return cls.from_pretrained(source, variant=variant, **kwargs)
        except ValueError as exc:
            if "variant" not in str(exc):
                raise
    return cls.from_pretrained(source, **kwargs)


def locate(
    model_id: str, family: str, revision: str | None, cache_dir: Path
) -> tuple[str | Path, str | None, str, dict[str, Any]]:
    """Where to load ``model_id`` from: (source, revision to record, family, from_pretrained kwargs).

    ``tiny`` and ``tiny-*`` are built into ``cache_dir`` (no network); a folder is loaded as it is;
    a Hub id only from the cache (``local_files_only``): the daemon never downloads (a 10 GB fetch
    inside a service start, under systemd's start timeout, fails badly), ``i2vd fetch-model``
    (daemon/engine/fetch.py) does that ahead of time, so a missing model fails fast with the command to run.
    """
    if tiny.is_tiny(model_id):
        detected = tiny.BUILDS[model_id].family
        source = tiny.build(model_id, cache_dir)
        recorded = tiny.recorded_version(model_id)  # the recipe, recorded in each job's metadata
        if family not in ("auto", detected):
            raise ValueError(f"model.family is {family!r} but {model_id!r} is a {detected} model.")
        return source, recorded, detected, {}
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return folder, None, detect_family(str(folder), family=family), {}  # a folder has no revision
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:  # a Hub id is "owner/name"
        raise FileNotFoundError(f"model.id {model_id!r} looks like a folder, but no such folder exists.")
    if not _in_cache(model_id, revision, cache_dir):
        # One line naming the fix, instead of the hub library's paragraph about local_files_only;
        # a RuntimeError like every other model that cannot be loaded.
        raise RuntimeError(
            f"model {model_id!r}{f' (revision {revision})' if revision else ''} is not in the model cache "
            f"{cache_dir}: run `i2vd fetch-model` once where the Hugging Face Hub can be reached (the daemon "
            "never downloads), or set model.id to a local model folder or 'tiny'."
        )
    detected = detect_family(model_id, family=family, cache_dir=cache_dir, revision=revision)
    kwargs = {"revision": revision, "cache_dir": str(cache_dir), "local_files_only": True}
    return model_id, revision, detected, kwargs


def _in_cache(model_id: str, revision: str | None, cache_dir: Path) -> bool:
    """Whether ``i2vd fetch-model`` (or any download) has put this model's index into ``cache_dir``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            model_id, "model_index.json", cache_dir=str(cache_dir), revision=revision
        )
    except Exception:  # an id the hub library rejects: let from_pretrained say what is wrong with it
        return True
    return isinstance(found, str)
