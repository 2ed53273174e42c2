"""Batches: when a folder of the inbox has no job left, say so once (``folder_done``).

A team drops 500 photos into ``inbox/marketing/`` and wants to know when all of them are
made. Each top-level folder of the inbox (and the inbox itself) has at most one open batch:
the jobs taken from it since it last had nothing waiting. When one of its jobs is filed and
none of its jobs is in progress, ready, or still arriving, the batch is done: its counts and
first and last job go to the webhooks and the page.

``claimed`` and ``step`` run on the loop thread; ``filed`` on the filing thread (it only
appends to a deque). Memory is one small entry per folder with jobs in progress.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from daemon.folders.jobs import Job
from daemon.listeners.events import FolderDone
from daemon.service.turns import line_of


@dataclass
class _Batch:
    first: str
    # Taken, not filed yet. A job put back into the inbox (a full disk) is never filed: it is
    # let go of once its claim is gone, and a later claim of it counts anew.
    open: dict[str, Job] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    last: str = ""


class Batches:
    def __init__(self, wall: Callable[[], datetime]) -> None:
        self._wall = wall
        self._open: dict[str, _Batch] = {}
        self._filed: deque[tuple[str, str, bool]] = deque()  # (folder, JOB, done?)

    def claimed(self, job: Job) -> None:
        """A job was taken out of the inbox (loop thread)."""
        folder = line_of(job.rel_dir)
        batch = self._open.get(folder)
        if batch is None:
            batch = self._open[folder] = _Batch(first=job.name)
        batch.open[job.name] = job

    def filed(self, job: Job, ok: bool) -> None:
        """A job was filed (filing thread)."""
        self._filed.append((line_of(job.rel_dir), job.name, ok))

    def step(self, waiting_in: Callable[[str], bool]) -> list[FolderDone]:
        """The batches done since the last step (loop thread)."""
        touched: set[str] = set()
        while self._filed:
            folder, name, ok = self._filed.popleft()
            batch = self._open.get(folder)
            if batch is None:
                continue
            batch.open.pop(name, None)
            batch.done += ok
            batch.failed += not ok
            batch.last = name
            touched.add(folder)
        out = []
        for folder in sorted(touched):
            batch = self._open[folder]
            batch.open = {name: job for name, job in batch.open.items() if job.dir.exists()}
            if not batch.open and not waiting_in(folder):
                del self._open[folder]
                out.append(
                    FolderDone(
                        folder=folder or ".",
                        done=batch.done,
                        failed=batch.failed,
                        first_job=batch.first,
                        last_job=batch.last,
                        finished_at=self._wall().isoformat(timespec="seconds"),
                    )
                )
        return out
