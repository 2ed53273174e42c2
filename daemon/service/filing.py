"""The filing thread: encodes generated frames and files every job, done or failed, in order.

The loop hands it finished work through a bounded queue, in the order generation finished;
when it falls behind the loop waits, so the frames held in memory stay bounded (those of the
jobs in flight, ``encode_queue`` waiting, and the one being encoded).

A job whose files cannot be written for want of room (the disk filled while it ran: share users
can fill it) neither fails nor is lost: it goes back into the inbox untouched, and ``disk_room``
holds new jobs until there is room again.
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
from daemon.folders.names import ERROR_FILE, job_files
from daemon.folders.publish import error_text, finish_done, finish_failed
from daemon.job.finish import Generated, Result, encode_and_record
from daemon.listeners.events import JobFinished
from daemon.messages import INTERNAL_ERROR, RERUN_ADVICE, RETRY_ADVICE
from daemon.service.disk_room import DiskRoom, NoRoom, room_problem
from daemon.service.executor import JobStopped
from daemon.states import Outcome


@dataclass
class Failed:
    """A job that failed before encoding, filed in turn to keep the order."""

    job: Job
    error: str | None  # None: interrupted, its files go back to the inbox
    advice: str = RETRY_ADVICE  # how error.txt ends: how to try again


def fail_job(job: Job, error: BaseException, log: Any, folder: str) -> Failed:
    """The one way a job that raised ``error`` is failed.

    1. a ``JobError`` is the user's problem: its message is their explanation, logged as a warning;
    2. anything else is the daemon's: logged with its traceback, and the user told so
       (``INTERNAL_ERROR``);
    3. a job stopped by a cancel (``JobStopped``) has nothing to fix: its error.txt ends with
       how to have it made after all (``RERUN_ADVICE``).
    """
    if isinstance(error, JobError):
        log.warning("job failed", reason=str(error), folder=folder)
        return Failed(job, str(error), RERUN_ADVICE if isinstance(error, JobStopped) else RETRY_ADVICE)
    log.error("internal error", error=repr(error), folder=folder, exc_info=error)
    return Failed(job, INTERNAL_ERROR)


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
        disk: DiskRoom | None = None,
    ) -> None:
        self.folders = folders
        self._settings = settings
        self._abort = abort
        self._where = where
        self._finished = finished
        self._disk = disk
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
        """File on the caller's thread (recovery at start, before the thread has work).

        Never back into the inbox for want of room: that would forget the crashes it counts.
        """
        self._file_safely(item, put_back=False)

    def stop(self) -> None:
        """File everything handed over, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._file_safely(item)
            finally:
                if item.job.name in self.encoding:
                    self.encoding.remove(item.job.name)

    def _file_safely(self, item: Generated | Failed, *, put_back: bool = True) -> None:
        try:
            self._file(item)
        except Exception as e:
            logs.close_job_log(item.job.name)
            problem = room_problem(e)
            if put_back and problem is not None and self._back_for_room(item.job, problem):
                return
            # Filing failed (folder gone, a disk error): the job stays claimed and is taken
            # up again by recovery at the next start; nothing is lost.
            self.log.exception("could not file job; it stays claimed until restart", job=item.job.name)

    def _back_for_room(self, job: Job, problem: str) -> bool:
        """A job whose files could not be written for want of room goes back into the inbox.

        Steps:
        1. only while its outputs are not published (else recovery finishes filing it at the next
           start, as after a crash): False;
        2. remove what filing wrote beside its inputs (error.txt, the copy of its log);
        3. put its inputs back into the inbox untouched (``release``); False if that cannot be done
           now (the job then stays claimed for the next start);
        4. hold new jobs until there is room (``DiskRoom.no_room``).
        """
        if not job.out.is_dir():
            return False
        for name in (ERROR_FILE, job_files(job.name).log):
            if name not in job.files:
                (job.inputs / name).unlink(missing_ok=True)
        if not release(self.folders, job):
            return False
        self.log.warning(
            "disk full: the job's files could not be written; it went back into the inbox and runs "
            "again once there is room",
            job=job.name,
            error=problem,
        )
        if self._disk is not None:
            self._disk.no_room(problem)
        return True

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
                    # A recipe that failed for want of room is no fault of the job's: not filed so.
                    if (full := room_problem(texts=result.recipe_errors.values())) is not None:
                        raise NoRoom(full)
                except Exception as e:
                    if room_problem(e) is not None:
                        raise  # back to the inbox (``_file_safely``), not failed
                    item = fail_job(job, e, log, failed_at)
                else:
                    log.info(
                        "job done",
                        folder=self._where(self.folders.outputs, job),
                        originals=self._where(self.folders.done, job),
                        recipe_errors=sorted(result.recipe_errors) or None,
                    )
                    logs.close_job_log(job.name)
                    folder = finish_done(self.folders, job)
                    if self._disk is not None:
                        self._disk.written()
                    self._finished(result, JobFinished(job.name, Outcome.DONE, folder, result.record, None))
                    return
        logs.close_job_log(job.name)
        if item.error is None:
            if not release(self.folders, job):
                log.warning(
                    "could not put the job back in the inbox; it stays claimed and resumes at next start"
                )
            return
        folder = finish_failed(self.folders, job, item.error, job.out / job_files(job.name).log, item.advice)
        # The text written, not read back: the folder is the share users' from here on, and
        # its error.txt may already be a link to a file the page and webhooks must never show.
        self._finished(
            Result(job, ok=False, error=item.error),
            JobFinished(job.name, Outcome.FAILED, folder, None, error_text(item.error, item.advice)),
        )
