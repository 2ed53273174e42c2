"""Which job runs on which worker, what each job's Future gets back, and the thread that follows it all.

``Dispatcher`` queues submitted jobs and hands each to an idle worker of the pool
(``daemon.cluster.pool``); a job whose worker died goes to another one if any is free. Each
worker's answer becomes the job's result (frames, or files it encoded), the job's own error,
``Cancelled``, or ``WorkerLost`` when the worker's process died, which the loop counts as one
attempt and submits again. One thread follows every call in flight: answers, step-by-step
progress, GPUs that join, and one log line when no worker is left (jobs then wait in the inbox).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import numpy as np

from daemon.cluster.pool import Task, Worker, WorkerPool, short
from daemon.cluster.worker import Made, WorkerCancelled
from daemon.engine.interface import GenerationResult
from daemon.errors import JobError
from daemon.service.executor import Cancelled, JobStopped, ProgressBoard, WorkerLost

# The longest the thread sleeps when no call answers: its other duties (asking busy workers for
# their step, idle ones whether they live, the cluster for new GPUs) come due no faster than this.
# An answer wakes it at once, so a worker that finished gets the next job without waiting.
QUIET_ROUND = 0.5


class Dispatcher:
    """The jobs waiting for a worker, and the ``i2vd-ray`` thread that follows the pool's calls."""

    def __init__(self, pool: WorkerPool, *, board: ProgressBoard, log: Any) -> None:
        self.pool = pool
        self.board = board
        self._log = log
        self._pending: deque[Task] = deque()
        self._lost_on: dict[str, set[str]] = {}  # job -> workers that died under it
        self._stopping: dict[str, str] = {}  # job -> why ``stop_job`` stops it (its error.txt)
        self._told_empty = False
        self._thread: threading.Thread | None = None

    def submit(self, task: Task) -> None:
        with self.pool.lock:
            if self.pool.aborted:
                task.future.set_exception(Cancelled())
                return
            self._pending.append(task)
            self.assign()

    def cancel(self) -> None:
        """Every waiting job ends with ``Cancelled``, every running one is told to abort."""
        with self.pool.lock:
            self.pool.aborted = True
            while self._pending:
                task = self._pending.popleft()
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(Cancelled())
            for w in self.pool.workers.values():
                if w.task is not None:
                    w.actor.abort.remote()

    def stop_job(self, job: str, error: str) -> None:
        """One job ends with ``JobStopped(error)``: at once while it waits, else between two steps
        on its worker (told as a cold stop tells every worker, for this job only)."""
        with self.pool.lock:
            for task in list(self._pending):
                if task.job == job:
                    self._pending.remove(task)
                    if task.future.set_running_or_notify_cancel():
                        task.future.set_exception(JobStopped(error))
                    return
            for w in self.pool.workers.values():
                if w.task is not None and w.task.job == job:
                    self._stopping[job] = error
                    w.actor.stop_job.remote(job)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="i2vd-ray", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Join the thread (the pool is closing) and end every job not finished with ``Cancelled``."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self.pool.lock:
            for w in self.pool.workers.values():
                if w.task is not None and not w.task.future.done():
                    w.task.future.set_exception(Cancelled())
            for task in self._pending:
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(Cancelled())
            self._pending.clear()

    def _follow(self) -> None:
        while not self.pool.closing.is_set():
            try:
                self.round(QUIET_ROUND)
                self.pool.ask_progress()
                self.pool.scale()
                self._tell_capacity()
            except Exception:
                # Never let the thread die: the jobs in flight would wait for ever.
                self._log.exception("cluster dispatcher error")
                time.sleep(1.0)

    def round(self, timeout: float) -> None:
        """Wait up to ``timeout`` for calls to answer, and handle every answer."""
        for kind, worker, answer in self.pool.answers(timeout):
            if kind == "run":
                self._ran(worker, answer)
            elif kind == "info":
                if self.pool.loaded(worker, answer):
                    with self.pool.lock:
                        self.assign()
            elif kind == "progress":
                self.pool.progressed(worker, answer)

    def assign(self) -> None:
        """Hand waiting jobs to idle workers (called with the lock held)."""
        workers = sorted(self.pool.workers.values(), key=lambda w: w.name)
        idle = [w for w in workers if w.state == "idle"]
        while self._pending and idle:
            task = self._pending.popleft()
            if not task.future.set_running_or_notify_cancel():
                continue
            # A job whose worker died goes to another one if any is free (that one may be the cause).
            died_on = self._lost_on.get(task.job, set())
            worker = min(idle, key=lambda w: w.name in died_on)
            idle.remove(worker)
            worker.state, worker.task = "busy", task
            worker.progress_asked = time.monotonic()  # first asked PROGRESS_EVERY after the start
            self.pool.call("run", worker, worker.actor.run.remote(task.job, task.request, task.recipes))
            self.board.job_started(worker.name, task.job)

    def _ran(self, worker: Worker, answer: Future[Any]) -> None:
        from ray.exceptions import RayError, RayTaskError

        task = worker.task
        with self.pool.lock:
            stopped = self._stopping.pop(task.job, None) if task is not None else None
        try:
            made: Made = answer.result()
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, WorkerCancelled) and stopped is not None and not self.pool.aborted:
                error: BaseException = JobStopped(stopped)
            elif isinstance(cause, WorkerCancelled) or (
                self.pool.aborted and not isinstance(cause, JobError)
            ):
                error = Cancelled()
            elif isinstance(cause, JobError):
                error = cause  # the job's own problem, in the user's words
            else:
                error = RuntimeError(f"worker {worker.name}: {cause!r}")
            self._finish(worker, task, error=error, state="idle")
        except RayError as e:
            # The worker's process died (SIGKILL, out of memory, its machine gone). Ray restarts it
            # (max_restarts); the job is the loop's to submit again, as one more attempt.
            host = worker.info.host if worker.info else "?"
            self._log.warning("cluster worker lost mid-job", worker=worker.name, host=host, error=short(e))
            if task is not None:
                self._lost_on.setdefault(task.job, set()).add(worker.name)
            lost: BaseException = (
                Cancelled() if self.pool.aborted else WorkerLost(f"worker {worker.name} on {host}")
            )
            self._finish(worker, task, error=lost, state="lost")
            self.pool.restarting(worker)
        else:
            info = worker.info
            where = {
                "name": worker.name,
                "host": info.host if info else "?",
                "device": info.device if info else "?",
            }
            frames = made.frames
            if frames is None:
                # Encoded on the worker: only the shape is needed here (JOB.json's sizes); no memory.
                frames = np.broadcast_to(np.zeros((1, 1, 1, 3), dtype=np.uint8), made.shape)
            result = GenerationResult(frames, made.record, worker=where, encoded=made.encoded)
            if task is not None:
                self._lost_on.pop(task.job, None)
            self._finish(worker, task, result=result, state="idle")

    def _finish(
        self,
        worker: Worker,
        task: Task | None,
        *,
        result: GenerationResult | None = None,
        error: BaseException | None = None,
        state: str,
    ) -> None:
        with self.pool.lock:
            worker.task = None
            if worker.state == "busy":
                worker.state = state
            self.board.job_ended(worker.name)
            if state != "idle":
                self.board.update(worker.name, state=state)
            self.assign()
        if task is not None and not task.future.done():
            if error is not None:
                task.future.set_exception(error)
            else:
                task.future.set_result(result)  # type: ignore[arg-type]

    def _tell_capacity(self) -> None:
        """One log line when the last worker goes (jobs then wait), one when a worker is back."""
        capacity = self.pool.capacity
        if capacity == 0 and not self._told_empty and not self.pool.aborted:
            self._told_empty = True
            self._log.warning(
                "no cluster worker is available (lost or restarting); new jobs wait in the inbox until one"
                " is back",
                workers=len(self.pool.workers),
            )
        elif capacity > 0 and self._told_empty:
            self._told_empty = False
            self._log.info("cluster workers available again", capacity=capacity)
