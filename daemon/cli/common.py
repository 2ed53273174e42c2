"""What every ``i2vd`` command shares: exit codes, usage errors, the settings loaded and announced,
the trust check, the model loaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.config import (
    ConfigError,
    Settings,
    describe_config_source,
    env_overrides,
    find_config,
    load_settings,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake on the command line or in the configuration: exit 2 with one line."""


def cannot_start(reason: str) -> int:
    """``run`` could not start (the model does not load, a recipe is broken, the folders are taken):
    one plain line on stderr with the reason, which names the fix (journald files it as an error),
    and exit 2, as a configuration error does."""
    logs.say(f"cannot start: {reason}")
    return EXIT_USAGE


def settings_of(args: argparse.Namespace, log: Any = None) -> tuple[Path | None, Settings]:
    """The config file found (None: built-in defaults) and the settings, once they load.

    Then says which file that was (or where it looked), which ``I2VD_`` variables override it and
    which are no setting at all: on stderr (stdout stays for what scripts read), or as log lines
    for ``run``. A config that fails says so in its one error line instead.
    """
    path = find_config(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    _announce(args, path, log)
    return path, settings


def _announce(args: argparse.Namespace, path: Path | None, log: Any = None) -> None:
    overrides, warnings = env_overrides()
    source = describe_config_source(args.config, path)
    variables = [o.var for o in overrides]
    if log is None:
        extra = f"; overridden by {', '.join(variables)}" if variables else ""
        print(f"i2vd: {source}{extra}", file=sys.stderr)
        for warning in warnings:
            print(f"i2vd: warning: {warning}", file=sys.stderr)
    else:
        fields: dict[str, Any] = {"overridden_by": variables} if variables else {}
        if path is None:
            log.warning(source, **fields)
        else:
            log.info("config", file=str(path.absolute()), **fields)
        for warning in warnings:
            log.warning(warning)


def check_trust(path: Path | None, settings: Settings, log: Any) -> None:
    """Refuse (UsageError naming the fix) a config or state folder someone else could change;
    make the state folder private; warn when the config's secrets can be read by others."""
    from daemon.folders import trust

    try:
        if path is not None:
            trust.check_config(path)
        trust.secure_state(settings.state_dir)
    except trust.Untrusted as e:
        raise UsageError(f"cannot start: {e}") from None
    hooks = settings.webhooks
    if path is not None and (hooks.on_done or hooks.on_failed or hooks.on_folder_done):
        exposed = trust.config_exposed(path)
        if exposed is not None:
            log.warning(exposed)


def load_generator(settings: Settings):  # type: ignore[no-untyped-def]
    from daemon.engine.generator import load_generator
    from daemon.engine.options import EngineOptions

    return load_generator(
        settings.model.id,
        revision=settings.model.revision,
        device=settings.model.device,
        dtype=settings.model.dtype,
        cache_dir=settings.model_cache_dir,
        options=EngineOptions.from_config(settings.model, settings.loras),
        family=settings.model.family,
    )
