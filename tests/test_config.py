"""config.example.toml is valid and documents every key the daemon reads."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.config import ConfigError, Settings, env_overrides, load_settings
from daemon.config_sections import LoraConfig

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
        if section == "loras":  # named tables: every key of one, shown in a commented [loras.NAME] example
            assert "[loras." in text
            for key in LoraConfig.model_fields:
                if not re.search(rf"^#? ?{key} = ", text, re.MULTILINE):
                    missing.append(f"loras.NAME.{key}")
            continue
        assert isinstance(field.default_factory(), BaseModel)  # type: ignore[call-arg, misc]
        model = type(field.default_factory())  # type: ignore[call-arg, misc]
        assert f"[{section}]" in text
        for key in model.model_fields:
            if not re.search(rf"^#? ?{key} = ", text, re.MULTILINE):
                missing.append(f"{section}.{key}")
    assert not missing, f"undocumented in config.example.toml: {missing}"


def test_a_misspelt_key_or_section_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[modle]\nid = "tiny"\n[model]\ndevise = "cpu"\n[recipes.square]\nfiltrs = []\n[watch]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    message = str(e.value)
    assert message.startswith(f"invalid configuration in {path}: ")
    assert "modle: unknown section (did you mean [model]?)" in message
    assert "model.devise: unknown key (did you mean model.device?)" in message
    assert "recipes.square.filtrs: unknown key (did you mean recipes.square.filters?)" in message
    assert "watch.x: unknown key (check the spelling against config.example.toml)" in message


def test_file_and_environment_problems_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[watch]\nsettle_seconds = -1\n")
    monkeypatch.setenv("I2VD_WATCH__MODE", "fast")
    monkeypatch.setenv("I2VD_GENERATION__RESOLUTION", "1024p")
    monkeypatch.setenv("I2VD_LIMITS__RESOLUTIONS", '["512p"]')
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    file_part, _, env_part = str(e.value).partition("; invalid environment variable ")
    assert file_part.startswith(f"invalid configuration in {path}: watch.settle_seconds")
    assert "I2VD_WATCH__MODE=fast: watch.mode" in env_part and "fast" not in file_part
    monkeypatch.delenv("I2VD_WATCH__MODE")
    path.write_text("")
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    # A check across two keys blames the variables that set them.
    assert str(e.value).startswith(
        'invalid environment variable I2VD_GENERATION__RESOLUTION=1024p, I2VD_LIMITS__RESOLUTIONS=["512p"]: '
    )


def test_env_overrides_reads_every_i2vd_variable_but_the_config_path() -> None:
    overrides, warnings = env_overrides(
        {"I2VD_CONFIG": "/etc/x.toml", "I2VD_MODEL__ID": "tiny", "i2vd_watch__mode": "poll", "I2VD_X": "1"}
    )
    assert [(o.var, o.key) for o in overrides] == [
        ("I2VD_MODEL__ID", "model.id"),
        ("i2vd_watch__mode", "watch.mode"),
    ]
    assert warnings == [
        "environment variable I2VD_X is not a setting and is ignored (see config.example.toml)"
    ]


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


def test_a_local_adapter_file_resolves_against_the_configs_folder(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text(
        '[loras.near]\nid = "loras/near.safetensors"\n[loras.far]\nid = "/srv/far.safetensors"\n'
        '[loras.hub]\nid = "owner/name"\nweight_name = "a.safetensors"\n'
    )
    loras = load_settings(path).loras
    assert loras["near"].id == str(tmp_path / "etc" / "loras" / "near.safetensors")
    assert loras["far"].id == "/srv/far.safetensors" and loras["hub"].id == "owner/name"
