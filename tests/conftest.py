"""Shared fixtures. Tests never reach a model hub: everything runs on the locally built tiny model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from daemon.encode.ffmpeg import FFmpeg
    from daemon.engine.runner import DiffusersGenerator
    from daemon.folders.jobs import Folders

# Set before anything imports huggingface_hub, which reads it once at import.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny I2VGen-XL, built once per test session (a few seconds)."""
    from daemon.engine.tiny.i2vgenxl import FOLDER
    from daemon.engine.tiny.registry import build_into

    return build_into("tiny", tmp_path_factory.mktemp("models") / FOLDER)


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir: Path) -> DiffusersGenerator:
    """The tiny model loaded once for the session, as the daemon keeps its model warm.

    Tests that change a generator (fault injection, options) load their own.
    """
    from daemon.engine.generator import load_generator
    from daemon.engine.runner import DiffusersGenerator

    # "tiny" with the session build's parent as cache: the registry finds the build and reuses it.
    gen = load_generator("tiny", revision=None, device="cpu", dtype="auto", cache_dir=tiny_model_dir.parent)
    assert isinstance(gen, DiffusersGenerator)
    return gen


@pytest.fixture(scope="session")
def tiny_families_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tiny builds of the other families, built on first use, for every module."""
    return tmp_path_factory.mktemp("family-models")


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    """A fresh set of the daemon's folders, made."""
    from daemon.folders.jobs import Folders

    f = Folders(
        tmp_path / "inbox", tmp_path / "outputs", tmp_path / "done", tmp_path / "failed", tmp_path / ".i2vd"
    )
    f.ensure()
    return f


#: Debian's ffmpeg package (5.1 on bookworm); scripts/test.sh installs it where it may.
SYSTEM_FFMPEG = Path("/usr/bin/ffmpeg")


@pytest.fixture(scope="session", params=["pinned", "system"])
def ffmpeg_binary(request: pytest.FixtureRequest) -> FFmpeg:
    """Each encode test runs twice: with the ffmpeg i2vd pins, and with Debian's.

    Operators may name a distribution's ffmpeg in ``[output] ffmpeg``; those builds differ (5.1
    exits 0 after writing an empty file), so what users get is checked against both.
    """
    from daemon.encode.ffmpeg import select_ffmpeg

    if request.param == "pinned":
        return select_ffmpeg(None)
    if not SYSTEM_FFMPEG.is_file():
        pytest.skip(f"{SYSTEM_FFMPEG} is absent: `apt-get install ffmpeg` (scripts/test.sh does) to test it")
    return select_ffmpeg(SYSTEM_FFMPEG)


@pytest.fixture(scope="session")
def random_lora(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``random_lora(model_id, seed)``: a random LoRA file for that tiny build, made once per session."""
    from daemon.engine.tiny.lora import make_random_lora

    folder = tmp_path_factory.mktemp("loras")
    made: dict[tuple[str, int], Path] = {}

    def get(model_id: str, seed: int = 1) -> Path:
        if (model_id, seed) not in made:
            made[model_id, seed] = make_random_lora(
                model_id, folder / f"{model_id}-{seed}.safetensors", seed=seed
            )
        return made[model_id, seed]

    return get


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tier a test is in by its folder: ``-m e2e`` runs the real ``i2vd`` flows only."""
    e2e = Path(__file__).resolve().parent / "e2e"
    for item in items:
        if e2e in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
