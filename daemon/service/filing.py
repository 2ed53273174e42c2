"""The filing thread: encodes generated frames and files every job, done or failed, in order.

The loop hands it finished work through a bounded queue, in the order generation finished;
when it falls behind the loop waits, so the frames held in memory stay bounded (those of the
jobs in flight, ``encode_queue`` waiting, and the one being encoded).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.config import Settings
from daemon.errors import JobError
from daemon.folders.claim import release
from daemon.folders.jobs import Folders, Job
from daemon.folders.publish import error_text, finish_done, finish_failed
from daemon.job.describe import Generated, Result, encode_and_record
from daemon.listeners.events import JobFinished

INTERNAL_ERROR = (
    "Something went wrong inside the video daemon while making this clip; it is not a problem with "
    "your files as far as we can tell. Move the files back into the inbox to try again, and if it "
    "fails again tell the operator (the details are in the log beside this file)."
)


@dataclass
class Failed:
    """A job that failed before encoding, filed in turn to keep the order."""

    job: Job
    error: str | None  # None: interrupted, its files go back to the inbox


_STOP = object()


class Filer:
    """One thread that encodes and files; ``finished`` is told of every job it filed."""

    def __init__(
        self,
        folders: Folders,
        settings: Callable[[], Settings],
        *,
        abort: threading.Event,
        where: Callable[[Path, Job], str],
        finished: Callable[[Result, JobFinished], None],
        size: int,
    ) -> None:
        self.folders = folders
        self._settings = settings
        self._abort = abort
        self._where = where
        self._finished = finished
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.encoding: list[str] = []  # jobs handed over, oldest first (for status)
        self._thread: threading.Thread | None = None
        self.log = logs.get()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="i2vd-filing", daemon=True)
        self._thread.start()

    def put(self, item: Generated | Failed) -> None:
        """Hand a job over; blocks while ``encode_queue`` jobs already wait (bounded memory)."""
        self.encoding.append(item.job.name)
        self._queue.put(item)

    def file_now(self, item: Failed) -> None:
        """File on the caller's thread (recovery at start, before the thread has work)."""
        self._file(item)

    def stop(self) -> None:
        """File everything handed over, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._file(item)
            except Exception:
                # Filing failed (disk full, folder gone): the job stays claimed and is taken
                # up again by recovery at the next start; nothing is lost.
                self.log.exception("could not file job; it stays claimed until restart", job=item.job.name)
                logs.close_job_log(item.job.name)
            finally:
                if item.job.name in self.encoding:
                    self.encoding.remove(item.job.name)

    def _file(self, item: Generated | Failed) -> None:
        """Encode if there are frames, then move the job to its final folders and tell listeners."""
        job = item.job
        log = self.log.bind(job=job.name)
        failed_at = self._where(self.folders.failed, job)
        if isinstance(item, Generated):
            if self._abort.is_set():
                log.warning("job interrupted by shutdown before encoding; its files go back to the inbox")
                item = Failed(job, None)
            else:
                try:
                    result = encode_and_record(item, self._settings(), log)
                except JobError as e:
                    log.warning("job failed", reason=str(e), folder=failed_at)
                    item = Failed(job, str(e))
                except Exception:
                    log.exception("internal error", folder=failed_at)
                    item = Failed(job, INTERNAL_ERROR)
                else:
                    log.info(
                        "job done",
                        folder=self._where(self.folders.outputs, job),
                        originals=self._where(self.folders.done, job),
                        recipe_errors=sorted(result.recipe_errors) or None,
                    )
                    logs.close_job_log(job.name)
                    folder = finish_done(self.folders, job)
                    self._finished(result, JobFinished(job.name, "done", folder, result.record, None))
                    return
        logs.close_job_log(job.name)
        if item.error is None:
            if not release(self.folders, job):
                log.warning(
                    "could not put the job back in the inbox; it stays claimed and resumes at next start"
                )
            return
        folder = finish_failed(self.folders, job, item.error, job.out / f"{job.name}.log")
        # The text written, not read back: the folder is the share users' from here on, and
        # its error.txt may already be a link to a file the page and webhooks must never show.
        self._finished(
            Result(job, ok=False, error=item.error),
            JobFinished(job.name, "failed", folder, None, error_text(item.error)),
        )
