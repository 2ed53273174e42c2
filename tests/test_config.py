"""config.example.toml is valid and documents every key the daemon reads."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.config import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.model.id == "tiny"
    assert settings.paths.inbox == EXAMPLE.parent / "inbox"


def test_every_key_is_documented() -> None:
    text = EXAMPLE.read_text()
    missing = []
    for section, field in Settings.model_fields.items():
        if section == "recipes":
            continue
        assert isinstance(field.default_factory(), BaseModel)  # type: ignore[call-arg, misc]
        model = type(field.default_factory())  # type: ignore[call-arg, misc]
        assert f"[{section}]" in text
        for key in model.model_fields:
            if not re.search(rf"^#? ?{key} = ", text, re.MULTILINE):
                missing.append(f"{section}.{key}")
    assert not missing, f"undocumented in config.example.toml: {missing}"


def test_output_ffmpeg_names_another_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().output.ffmpeg is None  # default: the pinned one
    path = tmp_path / "c.toml"
    path.write_text('[output]\nffmpeg = "sh"\n')  # a command name is looked up on PATH
    assert load_settings(path).output.ffmpeg == Path(shutil.which("sh") or "")
    monkeypatch.setenv("I2VD_OUTPUT__FFMPEG", sys.executable)
    assert load_settings(path).output.ffmpeg == Path(sys.executable)
    monkeypatch.setenv("I2VD_OUTPUT__FFMPEG", "")
    assert load_settings(path).output.ffmpeg is None


@pytest.mark.parametrize("value", ["/nowhere/ffmpeg", "bin/ffmpeg", "no-such-command-i2vd"])
def test_output_ffmpeg_that_is_not_there_names_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[output]\nffmpeg = "{value}"\n')
    with pytest.raises(ConfigError, match=r"output\.ffmpeg: .*(not an executable file|absolute path)"):
        load_settings(path)
