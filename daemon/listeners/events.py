"""What the main loop tells the outside world, and the listeners that take it from there.

The service calls these from its loop, scanner and filing threads, but never two at once (it
holds one lock while it calls them), so a listener needs no locking of its own against the
service. It must be quick and must never raise: slow work (HTTP, page rendering of large
folders) belongs in the listener's own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.job.record import JobRecord
from daemon.states import Outcome


@dataclass(frozen=True)
class JobFinished:
    job: str  # the JOB name
    outcome: Outcome
    folder: Path  # outputs/REL/JOB when done, failed/REL/JOB when failed
    record: JobRecord | None  # JOB.json, when done
    error: str | None  # the text of error.txt when failed


@dataclass(frozen=True)
class FolderDone:
    """A folder of the inbox has no job left waiting: its last one was just filed.

    ``folder`` is the top-level folder of the inbox ("." for the inbox itself); the counts and
    names are of the jobs taken from it since it last had nothing waiting.
    """

    folder: str
    done: int
    failed: int
    first_job: str
    last_job: str
    finished_at: str  # ISO 8601, local time with offset

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "folder_done",
            "folder": self.folder,
            "done": self.done,
            "failed": self.failed,
            "first_job": self.first_job,
            "last_job": self.last_job,
            "finished_at": self.finished_at,
        }


class Listener(Protocol):
    def on_status(self, status: dict[str, Any]) -> None:
        """The status just written to status.json (state, current, queue, recent, ...)."""

    def on_job_finished(self, event: JobFinished) -> None:
        """A job's files have been filed under outputs/ + done/ or failed/."""

    def close(self) -> None:
        """The daemon is stopping: flush, join threads (bounded time)."""


def tell_folder_done(listener: Listener, event: FolderDone) -> None:
    """``on_folder_finished`` for the listeners that have one (it is optional)."""
    handler = getattr(listener, "on_folder_finished", None)
    if handler is not None:
        handler(event)
