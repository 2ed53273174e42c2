"""What the main loop tells the outside world, and the listeners that take it from there.

The loop calls these from its own thread, between steps or from the per-step progress
callback, so a listener must be quick and must never raise: slow work (HTTP, page
rendering of large folders) belongs in the listener's own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class JobFinished:
    job: str  # the JOB name
    outcome: str  # "done" or "failed"
    folder: Path  # outputs/REL/JOB when done, failed/REL/JOB when failed
    info: dict[str, Any] | None  # the content of JOB.json when done
    error: str | None  # the text of error.txt when failed


class Listener(Protocol):
    def on_status(self, status: dict[str, Any]) -> None:
        """The status just written to status.json (state, current, queue, recent, ...)."""

    def on_job_finished(self, event: JobFinished) -> None:
        """A job's files have been filed under outputs/ + done/ or failed/."""

    def close(self) -> None:
        """The daemon is stopping: flush, join threads (bounded time)."""
