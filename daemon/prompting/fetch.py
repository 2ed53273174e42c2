"""Getting the prompt model onto the machine (``i2vd fetch-model``, with ``[prompting]`` on)."""

from __future__ import annotations

from pathlib import Path

from daemon.config_service import PromptingConfig
from daemon.engine.fetch import _offline, _reason
from daemon.prompting import tiny

# What from_pretrained reads for the model, its tokenizer and image processor: no video processor
# configs are needed, and no duplicate weight formats (a repository may hold .bin copies).
_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]


def fetch_prompt_model(cfg: PromptingConfig, *, cache_dir: Path) -> Path:
    """Make ``[prompting] model`` loadable offline; returns its folder. RuntimeError with the reason."""
    if cfg.model == tiny.TINY_ID:
        return tiny.build_tiny(Path(cache_dir) / tiny.folder_name())
    folder = Path(cfg.model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise RuntimeError(f"[prompting] model {folder} is a folder but holds no model (no config.json).")
        return folder
    if cfg.model.startswith(("/", ".", "~")) or cfg.model.count("/") != 1:
        raise RuntimeError(
            f"[prompting] model {cfg.model!r} is neither a Hugging Face id (owner/name) nor a folder."
        )
    if _offline():
        raise RuntimeError(
            "HF_HUB_OFFLINE is set, so the prompt model cannot be downloaded. Run the command with"
            " HF_HUB_OFFLINE=0 (the daemon itself can keep it set)."
        )
    from huggingface_hub import snapshot_download

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    try:
        path = snapshot_download(
            cfg.model, revision=cfg.revision, cache_dir=str(cache_dir), allow_patterns=_FILES
        )
    except Exception as exc:
        raise RuntimeError(f"Could not download the prompt model {cfg.model!r}: {_reason(exc)}") from exc
    return Path(path)
