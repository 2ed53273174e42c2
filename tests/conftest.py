"""Shared fixtures. Tests never reach a model hub: everything runs on the locally built tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub, which reads it once at import.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny I2VGen-XL, built once per test session (a few seconds)."""
    from daemon.tiny import TINY_VERSION, build_tiny

    return build_tiny(tmp_path_factory.mktemp("models") / f"tiny-i2vgenxl-v{TINY_VERSION}")
