"""The states a job, a worker and the daemon can be in, as status.json and the events say them,
and a job's progress in words.

``str`` enums: each member is its own value ("done", "idle"), so JSON, log lines and an older
status.json read back compare equal to them. On the ground floor: the service publishes them, the
listeners and the cluster read them.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a job ended (its inputs are in done/ or in failed/)."""

    DONE = "done"
    FAILED = "failed"


class WorkerStatus(StrEnum):
    """Where one generator (this machine's, or a cluster worker) stands."""

    LOADING = "loading"  # loading the model (at start, or after a restart)
    IDLE = "idle"
    BUSY = "busy"  # making a job's frames
    LOST = "lost"  # its process died; restarting
    FAILED = "failed"  # cannot load the model


# A worker that can take (or is doing) a job.
UP = frozenset({WorkerStatus.IDLE, WorkerStatus.BUSY})


class DaemonState(StrEnum):
    """The daemon as status.json says it."""

    IDLE = "idle"  # waiting for new files
    BUSY = "busy"  # jobs in flight
    STOPPED = "stopped"  # written last, at a clean stop


def progress(step: int | None, total: int | None) -> str:
    """A job's progress: ``step 12/50``; "starting" before the first step, while the total is not
    known yet (the model is still setting up)."""
    step = step or 0
    return "starting" if not step and not total else f"step {step}/{total or '?'}"
