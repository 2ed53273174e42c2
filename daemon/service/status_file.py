"""``STATE/status.json``: what the daemon is doing, rewritten atomically, readable by anyone."""

from __future__ import annotations

import json
import os
import time
import unicodedata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from daemon.folders import fsops

if TYPE_CHECKING:  # `i2vd status` reads this module: it must not pull in numpy and PIL
    from daemon.folders.scan import InboxScanner
    from daemon.service.executor import WorkerState
from daemon import states
from daemon.service.lock import lock_held
from daemon.states import DaemonState, Outcome

STATUS = "status.json"
# A running daemon rewrites its status at least this often, even when idle.
STALE_AFTER = 120.0


def build_status(
    *,
    state: str,
    model: str,
    workers: list[WorkerState],
    in_flight: list[str],
    encoding: list[str],
    queue: list[str],
    queue_length: int,
    scanner: InboxScanner,
    recent: list[dict[str, Any]],
    now: float,
    paused_reason: str | None = None,
    disk_free_mb: dict[str, int] | None = None,
    paused: dict[str, str] | None = None,
    active_hours: dict[str, Any] | None = None,
    left: dict[str, float] | None = None,
    encode_seconds: float = 0.0,
    waiting: list[dict[str, Any]] | None = None,
    batches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What status.json holds (and listeners get): the state, every job in flight with its worker
    and progress, the workers, what waits and what is arriving, and the recent results."""
    left = left or {}

    def eta(job: str, step_eta: float | None) -> dict[str, float | None]:
        # From its steps so far, else from recent jobs of its kind; ready once encoded too.
        seconds = step_eta if step_eta is not None else left.get(job)
        ready = None if seconds is None else round(seconds + encode_seconds, 1)
        return {"eta_seconds": seconds, "ready_in_seconds": ready}

    running = [
        {"job": w.job, "worker": w.name, "step": w.step, "total": w.total, **eta(w.job, w.eta(now))}
        for w in workers
        if w.job is not None
    ]
    started = {r["job"] for r in running}
    # Submitted but not started on a worker yet (a cluster's queue): shown as starting.
    running += [
        {"job": name, "worker": None, "step": 0, "total": None, **eta(name, None)}
        for name in in_flight
        if name not in started
    ]
    return {
        "state": state,
        "pid": os.getpid(),
        "model": model,
        "current": running[0] if running else None,
        "in_flight": running,
        "workers": [
            {
                "name": w.name,
                "host": w.host,
                "device": w.device,
                "state": w.state,
                "job": w.job,
                "error": w.error,
            }
            for w in workers
        ],
        "encoding": encoding,
        "queue": queue,
        "queue_length": queue_length,
        # The listed waiting jobs in the order they will start: position, estimated start and
        # ready time (ISO 8601; None until a job was measured, or while paused).
        "waiting": waiting or [],
        # Folders whose last waiting job was filed, newest first (the last few).
        "batches_done": batches or [],
        # Seen but not ready: still being written, or waiting for the other file of its pair.
        "arriving": [list(p) for p in scanner.pending],
        "inbox_missing": scanner.missing,
        "inbox_problem": scanner.missing_reason,
        "recent": recent,
        # Why no new job is taken although some wait (the disk nearly full); None: they are taken.
        "paused_reason": paused_reason,
        "disk_free_mb": disk_free_mb or {},
        # `i2vd pause` in force: since when, by whom (None: not paused).
        "paused": paused,
        # [queue] active_hours: the window, whether it is open, when it opens next (None: no window).
        "active_hours": active_hours,
    }


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Rewritten every second while busy: atomic for readers, not worth an fsync each time; on one
    line (`i2vd status --json` shows it indented); padded, so that it can still say "disk full"
    when the disk is (``fsops.write_padded``)."""
    data = fsops.json_bytes({**status, "updated_at": time.time()}, indent=None)
    fsops.write_padded(state_dir / STATUS, data)


def read_status(
    state_dir: Path, *, outputs: Path | None = None, failed: Path | None = None
) -> dict[str, Any]:
    """The last status written, with ``running`` false when no daemon holds the lock or it went quiet,
    and ``age_seconds``: how long ago it was written (None: never).

    Given the ``outputs`` and ``failed`` folders, the recent results whose folder is gone are left
    out (see ``still_there``).
    """
    try:
        status: dict[str, Any] = json.loads((state_dir / STATUS).read_text())
        if not isinstance(status, dict):
            raise ValueError("not a table")
    except (OSError, ValueError):
        status = {"state": "unknown"}
    try:
        age: float | None = max(0.0, time.time() - float(status["updated_at"]))
    except (KeyError, TypeError, ValueError):
        age = None
    status["age_seconds"] = age
    status["running"] = lock_held(state_dir) and age is not None and age < STALE_AFTER
    if outputs is not None and failed is not None and isinstance(status.get("recent"), list):
        status["recent"] = [r for r in status["recent"] if still_there(r, outputs, failed)]
    return status


def still_there(result: Any, outputs: Path, failed: Path) -> bool:
    """Whether a recent result's folder is still where it was filed, as the share page decides.

    A failed job's folder dragged back into the inbox to be tried again (or a folder someone
    deleted) is no result any more: listing it would send people looking for nothing, and show a
    retried job as failed beside its new result. A result without a folder (an older status) stays.
    """
    if not isinstance(result, dict) or not isinstance(result.get("folder"), str):
        return True
    rel = PurePosixPath(result["folder"])
    if rel.is_absolute() or ".." in rel.parts:
        return False  # not a folder of ours
    return ((failed if result.get("outcome") == Outcome.FAILED else outputs) / rel).is_dir()


def ago(seconds: float) -> str:
    """``seconds`` as a person says it: "40 s ago", "3 min ago", "5 h ago", "2 days ago"."""
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


# Bidirectional overrides and isolates reorder what a terminal shows ("Trojan Source").
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), so a file name, prompt or error
    a share user wrote cannot move the cursor, recolour or retitle the operator's terminal."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) == "Cc" or ord(c) in _BIDI
        else c
        for c in text
    )


def one_line(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters, cut at a word with "…" when too long.

    A job's error can span lines (ffmpeg's last words, a traceback's tail): in a table each entry
    must stay on its own line, and a cut mid-word reads as a different word.
    """
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    cut = flat[: width - 1]
    if " " in cut and not flat[width - 1].isspace():
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def _header(status: dict[str, Any]) -> str:
    state, age = status.get("state", "unknown"), status.get("age_seconds")
    if status.get("running"):
        return f"daemon   running ({state})"
    if not isinstance(age, (int, float)):
        return f"daemon   NOT running ({'no status written yet' if state == 'unknown' else state})"
    if state == DaemonState.STOPPED:
        return f"daemon   NOT running (stopped {ago(age)})"
    # Killed, crashed, or hung: what follows is what it said last, not what happens now.
    return f"daemon   NOT running (last seen {ago(age)}: {state}; it did not stop cleanly)"


def render(status: dict[str, Any]) -> str:
    """``i2vd status`` in words: one line per fact, every entry on its own line, nothing a share
    user wrote able to steer the terminal. When the daemon is not running, what it last said is
    shown as that (with how old it is), never as what happens now."""
    live = bool(status.get("running"))
    then = "" if live else " when last seen"
    lines = [_header(status)]
    paused = status.get("paused")
    if isinstance(paused, dict):
        by, since = one_line(str(paused.get("by")), 40), one_line(str(paused.get("since")), 40)
        lines.append(f"paused   since {since} by {by}{then}: no new job starts (i2vd resume goes on)")
    hours = status.get("active_hours")
    if isinstance(hours, dict) and not hours.get("open"):
        window, opens = one_line(str(hours.get("window")), 20), one_line(str(hours.get("opens_at")), 40)
        lines.append(f"hours    outside active hours {window}{then}: new jobs start at {opens}")
    if status.get("paused_reason"):
        lines.append(f"waiting  {one_line(str(status['paused_reason']), 200)}{then}")
    if status.get("inbox_missing"):
        problem = one_line(str(status.get("inbox_problem") or "share not mounted?"), 80)
        lines.append(f"inbox    MISSING{then}, waiting for it ({problem})")
    in_flight = status.get("in_flight") if isinstance(status.get("in_flight"), list) else None
    jobs = in_flight if in_flight is not None else ([status["current"]] if status.get("current") else [])
    jobs = [j for j in jobs if isinstance(j, dict)]
    for i, cur in enumerate(jobs):
        step, total = cur.get("step") or 0, cur.get("total")
        progress = states.progress(step, total)
        name = one_line(str(cur.get("job")), 60)
        if not live:
            # Its claim is still in the state folder: the next start takes it up again.
            label = "unfinished" if i == 0 else "          "
            lines.append(f"{label} {name}  ({progress}{then}; it resumes when the daemon starts)")
            continue
        seconds = cur.get("eta_seconds")
        eta = f", about {seconds:.0f} s left" if isinstance(seconds, (int, float)) else ""
        where = f"  on {cur['worker']}" if cur.get("worker") and len(jobs) > 1 else ""
        label = "current " if i == 0 else "        "
        lines.append(f"{label} {name}  {progress}{eta}{where}")
    if not jobs:
        lines.append("current  -")
    if live:  # a stopped daemon's workers went with it
        lines += _workers(status)
    queue = status.get("queue", [])
    queue = queue if isinstance(queue, list) else []
    ready_at = _ready_at(status) if live else {}
    shown = ", ".join(one_line(str(q), 60) + ready_at.get(str(q), "") for q in queue[:10]) + (
        ", …" if len(queue) > 10 else ""
    )
    try:
        total = max(len(queue), int(status.get("queue_length") or 0))
    except (TypeError, ValueError):
        total = len(queue)
    lines.append(f"queue    {total} ready{then}" + (": " + shown if queue else ""))
    arriving = [a for a in status.get("arriving", []) if isinstance(a, list) and len(a) == 2]
    if arriving:
        shown = ", ".join(f"{one_line(str(n), 40)} ({one_line(str(s), 40)})" for n, s in arriving[:5])
        lines.append(f"arriving {len(arriving)}{then}: {shown}" + (", …" if len(arriving) > 5 else ""))
    recent = status.get("recent", [])
    for r in [r for r in recent if isinstance(r, dict)][:10] if isinstance(recent, list) else []:
        error = f"  ({one_line(str(r['error']), 80)})" if r.get("error") else ""
        lines.append(f"  {r.get('outcome')!s:<7} {one_line(str(r.get('job')), 60)}{error}")
    return "\n".join(printable(line) for line in lines)


def _clock_time(iso: Any) -> str | None:
    """``HH:MM`` of an ISO 8601 time, with the date when it is not today; None if not one."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    now = datetime.now(when.tzinfo)
    return f"{when:%H:%M}" if when.date() == now.date() else f"{when:%a %H:%M}"


def _ready_at(status: dict[str, Any]) -> dict[str, str]:
    """Each listed waiting job's " (#N, ready ~HH:MM)", from the status' estimates."""
    out: dict[str, str] = {}
    waiting = status.get("waiting")
    for entry in waiting if isinstance(waiting, list) else []:
        if not isinstance(entry, dict):
            continue
        ready = _clock_time(entry.get("estimated_finish")) if entry.get("estimated_finish") else None
        when = f", ready ~{ready}" if ready else ""
        out[str(entry.get("job"))] = f" (#{entry.get('position')}{when})"
    return out


def _workers(status: dict[str, Any]) -> list[str]:
    """One line per worker when there are several (a cluster): where, which GPU, what it does."""
    workers = [w for w in status.get("workers") or [] if isinstance(w, dict)]
    if len(workers) < 2 and not any(str(w.get("name", "")).startswith("ray") for w in workers):
        return []
    running = status.get("in_flight")
    steps = {r.get("worker"): r for r in running if r.get("worker")} if isinstance(running, list) else {}
    lines = [
        f"workers  {sum(1 for w in workers if w.get('state') in ('idle', 'busy'))} of {len(workers)} ready"
    ]
    for w in workers:
        doing = str(w.get("state") or "?")
        if w.get("job"):
            run = steps.get(w.get("name"), {})
            step = f" step {run.get('step')}/{run.get('total')}" if run.get("total") else ""
            doing = f"{one_line(str(w['job']), 50)}{step}"
        elif w.get("error"):
            doing += f" ({one_line(str(w['error']), 60)})"
        lines.append(f"  {w.get('name')}  {w.get('host')}  {one_line(str(w.get('device')), 40)}  {doing}")
    return lines
