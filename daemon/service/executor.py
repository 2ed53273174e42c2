"""Where generation runs: the seam between the folders (one coordinator) and the GPUs.

The loop hands an ``Executor`` a checked, sized ``GenerationRequest`` and gets a ``Future``
back; it claims new jobs while fewer than ``capacity`` are in flight. Progress comes back
through one channel, the ``ProgressBoard``: workers write to it (it never raises), the
loop reads it for status, the share page and the metrics. A cold stop is ``cancel()``:
every job in flight ends with ``Cancelled`` and its files go back to the inbox. ``stop_job``
is the same for one job that must fail (over ``limits.max_job_seconds``): it ends between two
denoising steps with ``JobStopped``, and the worker goes on with the next job.

``ThreadExecutor`` is the local one: one thread per generator, each generator a model kept
warm (one GPU). With one generator it is the daemon's single-GPU behaviour; with several
``StubGenerator``s it is how tests exercise many jobs in flight on a CPU. The Ray executor
(``daemon.cluster``) is another implementation of the same protocol.
"""

from __future__ import annotations

import platform
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from daemon import logs
from daemon.engine.interface import GenerationRequest, GenerationResult, Generator, ModelInfo
from daemon.errors import JobError
from daemon.states import WorkerStatus


class WorkersUnfit(RuntimeError):
    """The workers cannot start for a reason of the machine or the cluster (no GPUs where the
    config asks for them); the message names it and the fix in one line."""


class StoppedWhileStarting(Exception):
    """A stop (SIGTERM) came while the workers were still starting: the start ends there, as a stop
    does, with nothing claimed. Not an error: ``i2vd run`` says so in one line and exits 0."""


class Cancelled(Exception):
    """A job interrupted by a cold stop (or a stop whose grace ran out); its files go back to the inbox."""


class JobStopped(JobError):
    """A job stopped between two denoising steps by ``stop_job``; ``str`` is its error.txt."""


class WorkerLost(Exception):
    """The worker running a job died (its process killed, its machine gone) before it finished.

    Counts as one attempt of the job, as a crash of a single daemon does; the loop submits the
    job again (to whichever worker is free) until ``limits.max_attempts``.
    """


@dataclass(frozen=True)
class WorkerState:
    """One worker as status, the share page, metrics and ``i2vd check`` show it."""

    name: str  # "local", "ray-0", ...
    host: str
    device: str  # "cpu", "cuda:0", or the GPU's name
    state: str = WorkerStatus.IDLE
    job: str | None = None
    step: int | None = None
    total: int | None = None
    started: float | None = None  # monotonic clock of the coordinator when the job started
    error: str | None = None  # why a worker is lost or could not load the model

    def eta(self, now: float) -> float | None:
        if self.started is None or not self.step or not self.total:
            return None
        return (now - self.started) / self.step * (self.total - self.step)


@dataclass
class ProgressBoard:
    """The one channel from workers to the coordinator: what each worker is doing, step by step.

    Thread-safe and cheap; ``on_change`` is told of every change (it must only set a flag).
    """

    on_change: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    _workers: dict[str, WorkerState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0

    def put(self, worker: WorkerState) -> None:
        with self._lock:
            self._workers[worker.name] = worker
            self.version += 1
        self.on_change()

    def update(self, name: str, **changes: Any) -> None:
        with self._lock:
            old = self._workers.get(name)
            if old is None:
                return
            self._workers[name] = replace(old, **changes)
            self.version += 1
        self.on_change()

    def remove(self, name: str) -> None:
        with self._lock:
            self._workers.pop(name, None)
            self.version += 1
        self.on_change()

    def snapshot(self) -> list[WorkerState]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: w.name)

    def job_started(self, name: str, job: str) -> None:
        self.update(name, state=WorkerStatus.BUSY, job=job, step=0, total=None, started=self.clock())

    def job_step(self, name: str, step: int, total: int) -> None:
        self.update(name, step=step, total=total)

    def job_ended(self, name: str) -> None:
        self.update(name, state=WorkerStatus.IDLE, job=None, step=None, total=None, started=None)


class Executor(Protocol):
    """What the loop needs from wherever generation runs."""

    board: ProgressBoard

    @property
    def model(self) -> ModelInfo:
        """The model every worker runs, known before any job: the loop sizes jobs with it."""
        ...

    @property
    def capacity(self) -> int:
        """Jobs that can run at once now (0 while no worker is available: jobs then wait)."""
        ...

    def start(self, *, warm_up: tuple[int, int] | None) -> None:
        """Load the model on every worker; warm up with (short side, frames) when given."""
        ...

    def submit(
        self, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None = None
    ) -> Future[GenerationResult]:
        """Run one job; the future raises ``Cancelled``, ``WorkerLost``, ``GenerationError`` or an
        internal error. ``recipes`` ({name: RecipeConfig}) are the outputs the job wants: an
        executor may encode them where it generated (``GenerationResult.encoded``) or leave them
        to the filing thread."""
        ...

    def cancel(self) -> None:
        """Cold stop: interrupt every job in flight (their futures raise ``Cancelled``)."""
        ...

    def stop_job(self, job: str, error: str) -> None:
        """Interrupt one job between two denoising steps; its future raises ``JobStopped(error)``.

        A job not started yet ends so at once; one already past its last step, or ended, is let be.
        """
        ...

    def close(self) -> None:
        """Let go of every worker; no job is in flight any more."""
        ...


class ThreadExecutor:
    """Generators in this process, one thread each; ``capacity`` is how many there are."""

    def __init__(
        self, generators: Sequence[Generator], *, board: ProgressBoard | None = None, owned: bool = True
    ) -> None:
        if not generators:
            raise ValueError("a ThreadExecutor needs at least one generator")
        self.generators = list(generators)
        self._owned = owned  # close() lets go of the models too (not when the caller keeps them)
        self.board = board or ProgressBoard()
        self._queue: queue.Queue[tuple[str, GenerationRequest, Future[GenerationResult]] | None] = (
            queue.Queue()
        )
        self._abort = threading.Event()
        # Jobs submitted and not ended, and why each one ``stop_job`` was asked for must stop.
        self._live: set[str] = set()
        self._stopping: dict[str, str] = {}
        self._jobs_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._log = logs.get()

    @property
    def model(self) -> ModelInfo:
        return self.generators[0].info

    @property
    def capacity(self) -> int:
        return len(self.generators)

    def _name(self, index: int) -> str:
        return "local" if len(self.generators) == 1 else f"local-{index}"

    def start(self, *, warm_up: tuple[int, int] | None) -> None:
        host = platform.node()
        for i, gen in enumerate(self.generators):
            name = self._name(i)
            self.board.put(WorkerState(name, host, gen.info.device, state=WorkerStatus.LOADING))
            if warm_up is not None:
                gen.warm_up(short_side=warm_up[0], num_frames=warm_up[1])
            self.board.update(name, state=WorkerStatus.IDLE)
            thread = threading.Thread(target=self._work, args=(name, gen), name=f"i2vd-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(
        self, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None = None
    ) -> Future[GenerationResult]:
        # The filing thread encodes in this process: ``recipes`` are not needed here.
        future: Future[GenerationResult] = Future()
        with self._jobs_lock:
            self._live.add(job)
        self._queue.put((job, request, future))
        return future

    def cancel(self) -> None:
        self._abort.set()

    def stop_job(self, job: str, error: str) -> None:
        with self._jobs_lock:
            if job in self._live:
                self._stopping[job] = error

    def _ended(self, job: str) -> None:
        with self._jobs_lock:
            self._live.discard(job)
            self._stopping.pop(job, None)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._owned:
            for gen in self.generators:
                gen.close()

    def _work(self, name: str, gen: Generator) -> None:
        while (item := self._queue.get()) is not None:
            job, request, future = item
            if not future.set_running_or_notify_cancel():
                self._ended(job)
                continue
            if self._abort.is_set() or job in self._stopping:
                why = self._stopping.get(job)
                self._ended(job)
                future.set_exception(Cancelled() if self._abort.is_set() or why is None else JobStopped(why))
                continue

            def on_step(step: int, total: int, name: str = name, job: str = job) -> None:
                # Runs in this worker's own thread, between denoising steps: raising here is
                # how a generation is interrupted.
                if self._abort.is_set():
                    raise Cancelled()
                if (why := self._stopping.get(job)) is not None:
                    raise JobStopped(why)
                self.board.job_step(name, step, total)

            self.board.job_started(name, job)
            where = {"name": name, "host": platform.node(), "device": gen.info.device}
            try:
                # Lines the engine logs (an out-of-memory retry) go to this job's JOB.log too.
                with structlog.contextvars.bound_contextvars(job=job):
                    result = gen.generate(request, on_step)
            except BaseException as exc:
                self._ended(job)
                future.set_exception(exc)
            else:
                self._ended(job)
                future.set_result(replace(result, worker=where))
            finally:
                self.board.job_ended(name)
