"""structlog set-up: one line per event, and each job's own lines copied to its JOB.log.

Readable coloured lines on a terminal, JSON lines otherwise (under systemd journald
keeps them; ``JOURNAL_STREAM`` tells us it is there). The same events either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import structlog

_sinks: dict[str, TextIO] = {}
_lock = threading.Lock()


def _tee_to_job_log(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Copy a line bound to a job into that job's JOB.log, in plain words a user can read."""
    job = event.get("job")
    if job is not None:
        sink = _sinks.get(job)
        if sink is not None:
            extra = " ".join(
                f"{k}={_short(v)}"
                for k, v in event.items()
                if k not in ("event", "job", "level", "timestamp")
            )
            stamp = datetime.now().astimezone().isoformat(timespec="seconds")
            line = f"{stamp} {event.get('level', 'info'):<7} {event['event']}" + (
                f"  {extra}" if extra else ""
            )
            with _lock:
                try:
                    sink.write(line + "\n")
                    sink.flush()
                except (OSError, ValueError):
                    # A full disk under JOB.log (or the sink closed meanwhile) must not turn every
                    # log line of the job into an exception: the journal still has the line.
                    pass
    return event


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."


# syslog priorities, so `journalctl -p warning` finds our warnings (sd-daemon(3) prefixes).
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def _journal_priority(_logger: Any, method: str, line: str) -> str:
    return f"<{_PRIORITY.get(method, 6)}>{line}"


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured: an embedder
    (pytest's capture, a benchmark harness) that swaps and later closes its stream must not take our
    log down with it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR = _CurrentStderr()


def _plain(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    """``i2vd: warning: what happened (key=value, ...)``: a log line of a command run by a person,
    in the form of the command's own notes on stderr."""
    extra = ", ".join(
        f"{k}={_short(v)}" for k, v in event.items() if k not in ("event", "level", "timestamp", "logger")
    )
    return f"i2vd: {event.get('level', 'info')}: {event.get('event')}" + (f" ({extra})" if extra else "")


def configure(
    *,
    json_lines: bool | None = None,
    stream: TextIO | None = None,
    level: str = "info",
    plain: bool = False,
) -> None:
    """Configure structlog for the process; ``json_lines=None`` picks by the output's kind.

    ``plain``: the commands other than ``run`` (a person, or a script, waits for their answer on
    stdout): what is logged meanwhile goes to stderr as ``i2vd: LEVEL: ...`` lines, never JSON.
    """
    out = stream or _STDERR
    journal = "JOURNAL_STREAM" in os.environ
    if json_lines is None:
        json_lines = journal or not out.isatty()
    renderer: Any
    if plain:
        renderer = _plain
    elif json_lines:
        renderer = structlog.processors.JSONRenderer(default=str, ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            _tee_to_job_log,
            structlog.processors.format_exc_info,
            renderer,
            *([_journal_priority] if journal and not plain else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level.upper()),
        # One write per line (print() makes two: the text, then the newline).
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_library_logs()


class _ToStructlog(logging.Handler):
    """Hands a stdlib logging record (a library's, or a captured ``warnings`` warning) to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # A captured warning carries its source line after a newline: one line is enough.
            lines = record.getMessage().strip().splitlines()
            get().log(record.levelno, lines[0] if lines else "", logger=record.name)
        except Exception:
            self.handleError(record)


class _DropShutdownNoise(logging.Filter):
    # watchdog's inotify thread reports its own observer being stopped under it (a cold stop) as an
    # error; nothing is wrong and nothing is lost, so an operator must not be sent looking.
    # It sits on our handler: a filter on the "watchdog" logger never sees records that its
    # child loggers ("watchdog.observers.inotify") log and propagate.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("watchdog") and "called when the thread is inactive" in record.getMessage()
        )


# Library lines an operator can act on; the rest (deprecations, optional-backend notices) are for
# the developers of this program, who see them by lowering these levels.
_LIBRARY_LEVELS = {
    "diffusers": logging.ERROR,
    "transformers": logging.ERROR,
    # torchao (model.quantize) logs each GPU kernel library it cannot load on this machine, at import.
    "torchao": logging.ERROR,
    # torchao, imported by diffusers when installed, registers enums that torch 2.13 now handles itself:
    # one deprecation line each, in torch's own format, at every start.
    "torch.utils._pytree": logging.ERROR,
    "huggingface_hub": logging.WARNING,
    "watchdog": logging.WARNING,
    "py.warnings": logging.WARNING,
}


def _route_library_logs() -> None:
    """Every stdlib log record at WARNING and above, and every ``warnings`` warning, becomes one line
    through structlog (JSON for journald like ours), instead of a differently formatted stderr line."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    handler = _ToStructlog(logging.WARNING)
    handler.addFilter(_DropShutdownNoise())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    for name, level in _LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)


def adopt_model_libraries() -> None:
    """Call once diffusers is imported: its and transformers' own stderr handlers give way to the
    structlog route above, and their progress bars (loading, writing the tiny model's shards) stop.

    Both libraries install a handler on import and stop propagation; this undoes that.
    Hub download bars (``i2vd fetch-model``) are huggingface_hub's and stay.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_default_handler()
        lib.enable_propagation()
        lib.disable_progress_bar()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(_LIBRARY_LEVELS[name])


def redact_url(url: str) -> str:
    """``url`` as it may be logged or shown: scheme and host only, whatever follows it left out.

    Webhook URLs carry their credentials in the user part, the query or the path itself (a chat
    service's hook URL is a secret as a whole), so nothing after the host is safe to show.
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(a URL that cannot be read)"
    if not parts.scheme or not host:
        return "(a URL that cannot be read)"
    hidden = parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc
    return f"{parts.scheme}://{host}" + ("/…" if hidden else "")


def say(text: str, *, level: str = "error") -> None:
    """One plain line on stderr, ``i2vd: TEXT``, for what a person must read at once (a start that
    failed, naming the fix) rather than find among log events; journald gets its priority."""
    prefix = f"<{_PRIORITY.get(level, 6)}>" if "JOURNAL_STREAM" in os.environ else ""
    print(f"{prefix}i2vd: {' '.join(text.split())}", file=sys.stderr, flush=True)


def get(name: str = "i2vd") -> Any:
    # A daemon embedded without the CLI (tests, benchmarks) still gets our processors,
    # so JOB.log files are written either way.
    if not structlog.is_configured():
        configure()
    return structlog.get_logger(name)


def open_job_log(job: str, path: Path) -> None:
    """From now on every line bound to ``job`` is also appended to ``path``.

    A job's log spans two threads (generation, then encoding), hence open/close rather
    than only a context manager.
    """
    # backslashreplace: a file name that is not UTF-8 (from an NFS client) must not fail the job.
    try:
        sink = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - see close_job_log
    except OSError as e:
        # No room for even an empty file (no inodes left): the job runs; its lines go to the journal.
        get().warning(
            "cannot open the job's log; its lines go to the daemon's log only", job=job, error=e.strerror
        )
        return
    with _lock:
        old = _sinks.pop(job, None)
        _sinks[job] = sink
    if old is not None:
        _close_quietly(old)


def close_job_log(job: str) -> None:
    with _lock:
        sink = _sinks.pop(job, None)
    if sink is not None:
        _close_quietly(sink)


def _close_quietly(sink: TextIO) -> None:
    # Closing flushes: on a full disk that fails, and the file is closed all the same.
    with contextlib.suppress(OSError):
        sink.close()


class Recurring:
    """A problem met again at every retry (a full disk under status.json, rewritten every second):
    logged once per distinct reason and once when it clears, never once per try.

    ``failed(error)`` after a try that failed, ``ok()`` after one that worked. The reason of an
    OSError is its ``strerror`` alone, so the random temporary file name in its message does not
    make every try look new.
    """

    def __init__(self, what: str, **fields: Any) -> None:
        self.what = what
        self.fields = fields
        self.reason: str | None = None  # the problem now; None while it works

    def failed(self, error: BaseException) -> None:
        reason = (error.strerror or str(error)) if isinstance(error, OSError) else repr(error)
        if reason != self.reason:
            get().warning(f"cannot write {self.what}; trying again later", error=reason, **self.fields)
        self.reason = reason

    def ok(self) -> None:
        if self.reason is not None:
            get().info(f"{self.what} written again", **self.fields)
        self.reason = None
