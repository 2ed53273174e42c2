"""``STATE/status.json``: what the daemon is doing, rewritten atomically, readable by anyone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.folders import fsops

if TYPE_CHECKING:  # `i2vd status` reads this module: it must not pull in numpy and PIL
    from daemon.folders.scan import InboxScanner
    from daemon.service.executor import WorkerState
from daemon.service.lock import lock_held

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
) -> dict[str, Any]:
    """What status.json holds (and listeners get): the state, every job in flight with its worker
    and progress, the workers, what waits and what is arriving, and the recent results."""
    running = [
        {"job": w.job, "worker": w.name, "step": w.step, "total": w.total, "eta_seconds": w.eta(now)}
        for w in workers
        if w.job is not None
    ]
    started = {r["job"] for r in running}
    # Submitted but not started on a worker yet (a cluster's queue): shown as starting.
    running += [
        {"job": name, "worker": None, "step": 0, "total": None, "eta_seconds": None}
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
        # Seen but not ready: still being written, or waiting for the other file of its pair.
        "arriving": [list(p) for p in scanner.pending],
        "inbox_missing": scanner.missing,
        "inbox_problem": scanner.missing_reason,
        "recent": recent,
        # Why no new job is taken although some wait (the disk nearly full); None: they are taken.
        "paused_reason": paused_reason,
        "disk_free_mb": disk_free_mb or {},
    }


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Rewritten every second while busy: atomic for readers, not worth an fsync each time; padded,
    so that it can still say "disk full" when the disk is (``fsops.write_padded``)."""
    fsops.write_padded(state_dir / STATUS, fsops.json_bytes({**status, "updated_at": time.time()}))


def read_status(state_dir: Path) -> dict[str, Any]:
    """The last status written, with ``running`` false when no daemon holds the lock or it went quiet."""
    try:
        status: dict[str, Any] = json.loads((state_dir / STATUS).read_text())
    except (OSError, ValueError):
        status = {"state": "unknown"}
    fresh = time.time() - float(status.get("updated_at", 0)) < STALE_AFTER
    status["running"] = lock_held(state_dir) and fresh
    return status


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


def render(status: dict[str, Any]) -> str:
    lines = [
        f"daemon   {'running' if status.get('running') else 'NOT running'} ({status.get('state', 'unknown')})"
    ]
    if status.get("paused_reason"):
        lines.append(f"waiting  {one_line(str(status['paused_reason']), 200)}")
    if status.get("inbox_missing"):
        problem = one_line(str(status.get("inbox_problem") or "share not mounted?"), 80)
        lines.append(f"inbox    MISSING, waiting for it ({problem})")
    in_flight = status.get("in_flight") if isinstance(status.get("in_flight"), list) else None
    jobs = in_flight if in_flight is not None else ([status["current"]] if status.get("current") else [])
    for i, cur in enumerate(jobs):
        step, total = cur.get("step") or 0, cur.get("total")
        # Before the first step the total is not known yet (the model is still setting up).
        progress = "starting" if not step and not total else f"step {step}/{total or '?'}"
        eta = f", about {cur['eta_seconds']:.0f} s left" if cur.get("eta_seconds") is not None else ""
        where = f"  on {cur['worker']}" if cur.get("worker") and len(jobs) > 1 else ""
        label = "current " if i == 0 else "        "
        lines.append(f"{label} {one_line(str(cur['job']), 60)}  {progress}{eta}{where}")
    if not jobs:
        lines.append("current  -")
    lines += _workers(status)
    queue = status.get("queue", [])
    shown = ", ".join(one_line(str(q), 60) for q in queue[:10]) + (", …" if len(queue) > 10 else "")
    total = max(len(queue), int(status.get("queue_length") or 0))
    lines.append(f"queue    {total} ready" + (": " + shown if queue else ""))
    arriving = [a for a in status.get("arriving", []) if isinstance(a, list) and len(a) == 2]
    if arriving:
        shown = ", ".join(f"{one_line(str(n), 40)} ({s})" for n, s in arriving[:5])
        lines.append(f"arriving {len(arriving)}: {shown}" + (", …" if len(arriving) > 5 else ""))
    for r in status.get("recent", [])[:10]:
        error = f"  ({one_line(str(r['error']), 80)})" if r.get("error") else ""
        lines.append(f"  {r['outcome']:<7} {one_line(str(r['job']), 60)}{error}")
    return "\n".join(lines)


def _workers(status: dict[str, Any]) -> list[str]:
    """One line per worker when there are several (a cluster): where, which GPU, what it does."""
    workers = status.get("workers") or []
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
