"""The daemon's main loop: one small ``step()`` called until a stop is asked for.

Signal handlers only set flags (see ``cli``); the watcher only sets ``wake``; all work
happens here, in one thread, one job at a time, with the model kept warm between jobs.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from . import logs
from .config import Settings
from .errors import JobError
from .generate import Generator
from .inbox import Group, InboxScanner
from .jobs import Folders, Job, claim, finish_done, finish_failed, recover, release
from .process import Result, run_job
from .status import write_status
from .watcher import Watcher

INTERNAL_ERROR = (
    "Something went wrong inside the video daemon while making this clip; it is not a problem with "
    "your files as far as we can tell. Move the files back into the inbox to try again, and if it "
    "fails again tell the operator (the details are in the log beside this file)."
)


class Aborted(Exception):
    """Raised from the progress callback when a cold stop interrupts a generation."""


class DaemonLocked(Exception):
    """Another daemon already serves these folders."""


def folders_of(settings: Settings) -> Folders:
    p = settings.paths
    return Folders(inbox=p.inbox, outputs=p.outputs, done=p.done, failed=p.failed, state=settings.state_dir)


class Service:
    def __init__(
        self,
        settings: Settings,
        generator: Generator,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 3,
        watch: bool = True,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.clock = clock
        self.max_attempts = max_attempts
        self.folders = folders_of(settings)
        self.scanner = InboxScanner(
            self.folders.inbox,
            ignore=settings.watch.ignore,
            settle_seconds=settings.watch.settle_seconds,
            pair_timeout=settings.watch.pair_timeout,
            clock=clock,
        )
        self.stop = threading.Event()  # warm stop: finish the current job, claim no more
        self.abort = threading.Event()  # cold stop: interrupt the current job, return it to the inbox
        self.wake = threading.Event()  # set by the watcher when something in the inbox changed
        self.log = logs.get()
        self.results: deque[Result] = deque(maxlen=50)
        self._ready: deque[Group] = deque()
        self._resume: deque[Job] = deque()
        self._last_scan = float("-inf")
        self._lock: IO[str] | None = None
        self._current: dict[str, Any] | None = None
        self._status_at = float("-inf")
        self._watcher = Watcher(self.folders.inbox, self.wake, settings.watch.mode) if watch else None

    # -- set-up and tear-down ------------------------------------------------------------

    def setup(self) -> None:
        """Create the folders, take the lock, finish what a crash left, start watching."""
        self.folders.ensure()
        self._take_lock()
        again, exhausted = recover(self.folders, self.max_attempts)
        for job in exhausted:
            finish_failed(
                self.folders,
                job,
                f"Making this clip stopped the video daemon {job.attempts - 1} times in a row, so it was "
                "set aside to protect the other jobs. Try a smaller resolution or fewer frames, or ask "
                "the operator to look at the daemon's log.",
            )
            self.log.error("job failed after repeated crashes", job=job.name, attempts=job.attempts - 1)
        self._resume.extend(again)
        for job in again:
            self.log.warning("resuming job interrupted by a crash", job=job.name, attempt=job.attempts)
        if self._watcher is not None:
            self._watcher.start()
        self.log.info("watching", inbox=str(self.folders.inbox), model=self.generator.model_id)
        self.publish_status("idle")

    def teardown(self) -> None:
        if self._lock is not None:
            self.publish_status("stopped")
        if self._watcher is not None:
            self._watcher.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _take_lock(self) -> None:
        path = self.folders.state / "daemon.lock"
        f = open(path, "a+")  # noqa: SIM115 - held open for the whole run: it is the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DaemonLocked(
                f"another i2vd ({holder}) already serves these folders (lock {path}); "
                "run one daemon per set of folders"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._lock = f

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.teardown()

    def step(self) -> Result | None:
        """Take and process one job if one is ready, otherwise wait a little for news."""
        job = self._next_job()
        if job is None:
            if self.clock() - self._status_at > 30:
                self.publish_status("idle")  # keeps status.json fresh so `i2vd status` can tell we live
            self.wake.wait(self.settings.watch.poll_interval)
            return None
        job, queued_at = job
        return self.process(job, queued_at)

    def run_once(self) -> list[Result]:
        """Process every job that is ready now (waiting for files still settling), then stop."""
        self.setup()
        results: list[Result] = []
        try:
            deadline = self.clock() + self.settings.watch.settle_seconds
            while not self.stop.is_set():
                result = self.step()
                if result is not None:
                    results.append(result)
                elif (
                    not self._ready
                    and not self._resume
                    and (self.scanner.waiting == 0 or self.clock() > deadline)
                ):
                    break
        finally:
            self.teardown()
        return results

    def _next_job(self) -> tuple[Job, datetime] | None:
        if self._resume:
            job = self._resume.popleft()
            return job, job.claimed_at
        now = self.clock()
        if (
            not self._ready
            or self.wake.is_set()
            or now - self._last_scan >= self.settings.watch.poll_interval
        ):
            self.wake.clear()
            self._last_scan = now
            # Rescanning only now and then (not before every claim) keeps a backlog of
            # thousands from costing a directory walk per job.
            self._ready = deque(self.scanner.scan())
            self.publish_status("busy" if self._current else "idle")
        while self._ready and not self.stop.is_set():
            group = self._ready.popleft()
            wall = datetime.now().astimezone()
            job = claim(self.folders, group, wall)
            if job is not None:
                return job, wall - timedelta(seconds=max(0.0, now - group.since))
        return None

    # -- one job -------------------------------------------------------------------------

    def publish_status(self, state: str) -> None:
        self._status_at = self.clock()
        write_status(
            self.folders.state,
            {
                "state": state,
                "pid": os.getpid(),
                "model": self.generator.model_id,
                "current": self._current,
                "queue": [f"{(g.rel_dir / g.name).as_posix()}" for g in list(self._ready)[:200]],
                "queue_length": len(self._ready) + len(self._resume),
                "recent": [
                    {"job": r.job.name, "outcome": "done" if r.ok else "failed", "error": r.error}
                    for r in reversed(self.results)
                ][:20],
            },
        )

    def _on_step(self, job: Job, log: Any) -> Callable[[int, int], None]:
        t0 = self.clock()

        def on_step(step: int, total: int) -> None:
            if self.abort.is_set():
                raise Aborted()
            now = self.clock()
            eta = (now - t0) / step * (total - step) if step else None
            self._current = {"job": job.name, "step": step, "total": total, "eta_seconds": eta}
            log.debug("step", step=step, total=total)
            if now - self._status_at >= 1.0 or step == total:
                self.publish_status("busy")

        return on_step

    def process(self, job: Job, queued_at: datetime) -> Result:
        """Run one claimed job and move it to its final folders, whatever happens."""
        log = self.log.bind(job=job.name)
        log_path: Path = job.out / f"{job.name}.log"
        self._current = {"job": job.name, "step": 0, "total": None, "eta_seconds": None}
        self.publish_status("busy")
        with logs.job_log(job.name, log_path):
            try:
                result = run_job(
                    job,
                    self.settings,
                    self.generator,
                    log,
                    queued_at=queued_at,
                    on_step=self._on_step(job, log),
                )
            except Aborted:
                log.warning("job interrupted by shutdown; its files go back to the inbox")
                result = Result(job, ok=False, error=None)
            except JobError as e:
                log.warning("job failed", reason=str(e))
                result = Result(job, ok=False, error=str(e))
            except Exception:
                log.exception("internal error")
                result = Result(job, ok=False, error=INTERNAL_ERROR)
            else:
                log.info("job done", recipe_errors=sorted(result.recipe_errors) or None)
        if result.ok:
            finish_done(self.folders, job)
        elif result.error is None:
            release(self.folders, job)
        else:
            finish_failed(self.folders, job, result.error, log_path)
        self.results.append(result)
        self._current = None
        self.publish_status("idle")
        return result
