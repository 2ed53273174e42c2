"""The ``i2vd`` parser and entry point: which command runs, and where its answer goes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from daemon import __version__, logs
from daemon.cli.common import EXIT_OK, EXIT_USAGE, UsageError
from daemon.cli.models import cmd_fetch_model, cmd_prompt
from daemon.cli.queue import cmd_cancel, cmd_pause, cmd_resume
from daemon.cli.reports import cmd_check, cmd_recipes, cmd_status
from daemon.cli.run import cmd_run
from daemon.cli.submit import cmd_submit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video hot folder daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--config", help="config file (default: $I2VD_CONFIG, ./config.toml, /etc/i2vd/config.toml)"
        )
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "watch the inbox and make clips until stopped")
    run.add_argument(
        "--once", action="store_true", help="process every job ready now, then exit (1 if any failed)"
    )
    add("check", cmd_check, "check config, folders, ffmpeg, recipes, device and model")
    status = add("status", cmd_status, "show the current job, the queue and recent results")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    submit = add("submit", cmd_submit, "place an image and its prompt into the inbox safely")
    submit.add_argument("image", help="the image file")
    submit.add_argument("--prompt", required=True, help="what should move, and how")
    submit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sidecar value, e.g. --set num_frames=16 (repeatable)",
    )
    submit.add_argument("--name", help="job name (default: the image's name)")
    submit.add_argument(
        "--last",
        metavar="IMAGE",
        help="the frame the clip ends on (only models that take one: see docs/models.md)",
    )
    add("recipes", cmd_recipes, "list the recipes")
    add(
        "pause",
        cmd_pause,
        "start no new job until i2vd resume (the jobs in progress finish; it lasts across restarts)",
    )
    add("resume", cmd_resume, "start new jobs again after i2vd pause")
    cancel = add("cancel", cmd_cancel, "cancel a waiting or running job; its files go to failed/")
    cancel.add_argument(
        "job", metavar="NAME|JOB", help="the image's name (cat, team/cat) or the JOB name status shows"
    )
    add("fetch-model", cmd_fetch_model, "download the configured model into the cache ahead of time")
    prompt = add("prompt", cmd_prompt, "print the prompt [prompting] would write for an image")
    prompt.add_argument("image", help="the image file")
    prompt.add_argument("--prompt", help="the user's own words, rewritten with the image")
    return parser


def _answers_only() -> TextIO:
    """The stream for the command's answer: the real stdout. From now on whatever else writes to
    stdout (a library's print, the processes Ray starts, which inherit it) lands on stderr, so a
    script reading stdout gets the answer and nothing else."""
    try:
        sys.stdout.flush()
        answer_fd = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptors (an embedder's streams)
        return sys.stdout
    return os.fdopen(
        answer_fd,
        "w",
        buffering=1 if sys.stdout.line_buffering else -1,
        encoding=sys.stdout.encoding,
        errors=sys.stdout.errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = _answers_only()
    if args.command == "run":
        logs.configure()
    else:
        # A person (or a script) waits for the answer: the log says only what went wrong, in plain
        # lines on stderr, not the service's JSON events.
        logs.configure(plain=True, level="warning")
    try:
        code = int(args.func(args))
        args.out.flush()  # a reader that left shows up here, not in the interpreter's last flush
        return code
    except UsageError as e:
        print(f"i2vd: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`i2vd status | head -3`): that is its choice, not an error to report.
        # Point the answer's stream at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), args.out.fileno())
        return EXIT_OK
