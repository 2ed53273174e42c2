"""``i2vd check``: one line per check, so an operator sees at once what to fix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.encode.ffmpeg import FFmpegUnavailable, select_ffmpeg
from daemon.encode.validate import recipe_errors
from daemon.engine.families import defaults_problem
from daemon.folders import trust
from daemon.folders.watch import filesystem_type, watch_mode

Check = tuple[bool, str, str]


def _folder(name: str, path: Path, mode: str) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".i2vd-check-"):
            pass
    except OSError as e:
        return False, f"folder {name}", f"{path} is not writable: {e.strerror}"
    free = shutil.disk_usage(path).free / 2**30
    fs = filesystem_type(path)
    # Only the inbox is watched; for the others the type still tells where moves are renames.
    watched = f", watched by {watch_mode(path, mode)}" if name == "inbox" else ""
    return True, f"folder {name}", f"{path} ({fs}{watched}, {free:.1f} GiB free)"


def _trust(settings: Settings, config: Path | None) -> Iterator[Check]:
    """Whether only the daemon's user (or root) can change the config and the state folder."""
    me = trust.user_name(os.geteuid())
    if config is not None:
        try:
            trust.check_config(config)
            who = me if os.geteuid() == 0 else f"{me} or root"
            yield True, "config file", f"{config.absolute()}: only {who} can change it"
        except trust.Untrusted as e:
            yield False, "config file", str(e)
    try:
        trust.secure_state(settings.state_dir)
        yield True, "state folder", f"{settings.state_dir}: private to {me}"
    except trust.Untrusted as e:
        yield False, "state folder", str(e)


def run_checks(
    settings: Settings, machine_checks: Callable[[Settings], Iterator[Check]], *, config: Path | None = None
) -> Iterator[Check]:
    """The checks every machine needs, then ``machine_checks`` (where the model runs: this machine,
    or the cluster's workers), unless ffmpeg is missing. The command line picks ``machine_checks``."""
    yield True, "config", "valid"
    yield from _trust(settings, config)
    mode = settings.watch.mode
    for name in ("inbox", "outputs", "done", "failed"):
        yield _folder(name, getattr(settings.paths, name), mode)
    yield _folder("state", settings.state_dir, mode)
    devices = {os.stat(settings.paths.inbox).st_dev, os.stat(settings.state_dir).st_dev}
    yield (
        True,
        "claims",
        "single renames (inbox and state on one filesystem)"
        if len(devices) == 1
        else "copy + fsync + rename (inbox and state on different filesystems: slower for big files)",
    )

    try:
        ffmpeg = select_ffmpeg(settings.output.ffmpeg)
    except FFmpegUnavailable as e:
        yield False, "ffmpeg", str(e)
        return
    yield True, "ffmpeg", ffmpeg.describe()

    for name, error in recipe_errors(settings.recipe_table(), ffmpeg).items():
        yield error is None, f"recipe {name}", "works" if error is None else error

    yield from machine_checks(settings)


def local_checks(settings: Settings, load_generator: Callable[[Settings], Any]) -> Iterator[Check]:
    """The device and the model on this machine (``[cluster] backend = "local"``)."""
    try:
        from daemon.engine.load import device_summary  # imports torch: only when the model runs here

        passed, detail = device_summary(settings.model.device)
        yield passed, "device", detail
    except Exception as e:
        yield False, "device", str(e)

    try:
        gen = load_generator(settings)
    except Exception as e:
        yield False, "model", f"{settings.model.id} cannot be loaded: {e}"
        return
    info = gen.info
    yield True, "model", f"{info.model_id} loaded on {info.device}, {info.family.label}"
    if gen.engine:  # the speed and memory settings in force after the CUDA-only ones were weighed
        yield True, "engine", ", ".join(f"{k} {v}" for k, v in gen.engine.items() if k != "family")
    problem = defaults_problem(info.family, settings.generation.num_frames)
    yield problem is None, "defaults", problem or "[generation] defaults suit the model"
    yield from _prompt_model(settings)


_WHERE = {
    "gpu": "on the GPU beside the video model",
    "offload": "moved to the GPU only to write",
    "cpu": "on the CPU",
}


def _prompt_model(settings: Settings) -> Iterator[Check]:
    """With [prompting] on: the prompt model loads, and where it goes beside the video model
    (loaded just before, so the placement sees the memory it left, as at a start)."""
    from daemon.prompting.writer import writer_for

    writer = writer_for(settings)
    if writer is None:
        return
    try:
        writer.load()
    except Exception as e:
        yield False, "prompt model", str(e)
        return
    placement = writer.placement
    assert placement is not None  # load() placed it
    yield (
        True,
        "prompt model",
        f"{settings.prompting.model} {_WHERE[placement.where]} ({placement.reason}); "
        f"when = {settings.prompting.when!r}",
    )
    writer.close()
