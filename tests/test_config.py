"""config.example.toml is valid and documents every key the daemon reads."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from daemon.config import Settings, load_settings

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
