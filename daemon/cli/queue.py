"""``i2vd pause``, ``i2vd resume`` and ``i2vd cancel``: the operator's hold on the queue."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import EXIT_OK, UsageError, settings_of
from daemon.config import Settings


def _controls(args: argparse.Namespace) -> tuple[Any, Settings]:
    from daemon.service import controls

    _, settings = settings_of(args)
    return controls, settings


def _daemon_note(settings: Settings) -> str:
    from daemon.service.lock import lock_held

    if lock_held(settings.state_dir):
        return ""
    return " (the daemon is not running now; this holds when it starts)"


def cmd_pause(args: argparse.Namespace) -> int:
    from datetime import datetime

    controls, settings = _controls(args)
    try:
        p, new = controls.pause(settings.state_dir, controls.invoking_user(), datetime.now().astimezone())
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    was = "" if new else "already "
    print(
        f"{was}paused since {p.since} by {p.by}: the jobs in progress finish, no new job starts until "
        f"i2vd resume{_daemon_note(settings)}",
        file=args.out,
    )
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    controls, settings = _controls(args)
    try:
        was = controls.resume(settings.state_dir)
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    if was is None:
        print("not paused: new jobs start as they come", file=args.out)
    else:
        print(f"resumed (paused since {was.since} by {was.by}): new jobs start again", file=args.out)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    controls, settings = _controls(args)
    target = str(args.job).strip()
    if not target or "\0" in target or len(target) > 512:
        raise UsageError("name a job: NAME (as dropped), FOLDER/NAME, or the JOB name status shows")
    try:
        controls.request_cancel(settings.state_dir, target, controls.invoking_user())
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    print(
        f"asked the daemon to cancel {target}: its files go to failed/ with an error.txt saying so; "
        f"the daemon's log says what it found{_daemon_note(settings)}",
        file=args.out,
    )
    return EXIT_OK
