"""The jobs handed to the executor and not yet collected: submitting, collecting, retrying.

Apart from the loop because it is the one piece of bookkeeping that must survive every way a
generation can end (done, bad input found late, interrupted by a stop, stopped for taking too
long, a worker lost under it, our own bug) and turn each into the one thing the filing thread
takes, in the order they ended. Only the loop thread calls it, except ``_ended``, an executor
future's done callback.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from threading import Event

from daemon import logs
from daemon.engine.interface import GenerationResult
from daemon.folders.jobs import Job, count_attempt
from daemon.job.finish import Generated
from daemon.job.prepare import Prepared
from daemon.job.record import Worker
from daemon.messages import TOO_LONG_ERROR, WORKER_LOST_ERROR
from daemon.service.executor import Cancelled, Executor, WorkerLost
from daemon.service.filing import Failed, fail_job


@dataclass
class _Flight:
    prepared: Prepared
    future: Future[GenerationResult]
    submitted: float


class Flights:
    """Jobs in flight, in submission order; ``collect`` yields what to file, in the order they ended."""

    def __init__(
        self,
        executor: Executor,
        *,
        clock: Callable[[], float],
        wake: Callable[[], None],
        abort: Event,
        max_attempts: Callable[[], int],
        failed_where: Callable[[Job], str],
    ) -> None:
        self.executor = executor
        self.clock = clock
        self._wake = wake
        self._abort = abort
        self._max_attempts = max_attempts  # read at each retry: a reload may change it
        self._failed_where = failed_where
        self._flights: dict[str, _Flight] = {}
        self._ended: deque[str] = deque()
        self._capped: set[str] = set()  # told to stop for taking too long, not collected yet
        self.log = logs.get()

    def __len__(self) -> int:
        return len(self._flights)

    def names(self) -> list[str]:
        return list(self._flights)

    def jobs(self) -> list[Job]:
        return [f.prepared.job for f in self._flights.values()]

    def prepared(self) -> list[Prepared]:
        return [f.prepared for f in self._flights.values()]

    def submit(self, prepared: Prepared) -> None:
        """Hand a prepared job to the executor.

        1. submit its request and recipes under the job's name;
        2. note, from the worker's thread when it ends, the order it ended in, and wake the loop;
        3. keep it, with when it was submitted, until it is collected.
        """
        future = self.executor.submit(prepared.job.name, prepared.request, prepared.recipes)
        future.add_done_callback(lambda _f, name=prepared.job.name: self._ended_now(name))
        self._flights[prepared.job.name] = _Flight(prepared, future, self.clock())

    def _ended_now(self, name: str) -> None:
        self._ended.append(name)
        self._wake()

    def collect(self) -> Iterator[Generated | Failed]:
        """Every job whose generation ended, as the filing thread takes it, in the order they ended.

        A job whose worker was lost is submitted again instead, while its attempts last.
        """
        while self._ended:
            name = self._ended.popleft()
            self._capped.discard(name)
            flight = self._flights.pop(name, None)
            if flight is not None and (item := self._outcome(flight)) is not None:
                yield item

    def enforce_cap(self, seconds: float) -> None:
        """Stop each job generating for longer than ``seconds`` (0: no cap), once.

        Counted from when it started on its worker (the progress board says, on the loop's
        clock), so time spent waiting for a worker is not counted. The executor interrupts it
        between two denoising steps (``stop_job``): it fails with ``TOO_LONG_ERROR``, its files go
        to failed/, and the worker takes the next job.
        """
        if seconds <= 0 or not self._flights:
            return
        now = self.clock()
        for worker in self.executor.board.snapshot():
            job, started = worker.job, worker.started
            if job is None or started is None or job not in self._flights or job in self._capped:
                continue
            if now - started > seconds:
                self._capped.add(job)
                self.log.warning(
                    "job over limits.max_job_seconds; stopping it at its next step",
                    job=job,
                    seconds=round(now - started, 1),
                    limit=seconds,
                )
                self.executor.stop_job(job, TOO_LONG_ERROR.format(seconds=seconds))

    def _outcome(self, flight: _Flight) -> Generated | Failed | None:
        job = flight.prepared.job
        log = self.log.bind(job=job.name)
        try:
            result = flight.future.result()
        except Cancelled:
            log.warning("job interrupted by shutdown; its files go back to the inbox")
            return Failed(job, None)
        except WorkerLost as e:
            if self._abort.is_set():
                return Failed(job, None)  # a cold stop: back to the inbox, no attempt counted
            return self._retry(flight, e)
        except Exception as e:
            return fail_job(job, e, log, self._failed_where(job))
        seconds = self.clock() - flight.submitted
        log.info("frames generated", seconds=round(seconds, 2), clip_size=_size(result))
        worker = Worker(**result.worker) if result.worker else None
        return Generated(flight.prepared, result, seconds, worker)

    def _retry(self, flight: _Flight, lost: WorkerLost) -> Failed | None:
        """A worker died under this job.

        1. count the attempt in the job's claim record (if that cannot be written, the job stays
           claimed, for recovery at the next start);
        2. past ``max_attempts``, fail it with an explanation;
        3. otherwise submit it again; None means nothing to file now.
        """
        job = flight.prepared.job
        try:
            count_attempt(job)
        except OSError as e:
            self.log.error("cannot count the job's attempt; it stays claimed", job=job.name, error=str(e))
            return None
        flight.prepared.record.attempts = job.attempts
        if job.attempts > self._max_attempts():
            crashes = job.attempts - 1
            self.log.error("job failed: its worker died every time", job=job.name, attempts=crashes)
            return Failed(job, WORKER_LOST_ERROR.format(crashes=crashes))
        self.log.warning(
            "worker lost mid-job; submitting the job again",
            job=job.name,
            attempt=job.attempts,
            reason=str(lost),
        )
        self.submit(flight.prepared)
        return None


def _size(result: GenerationResult) -> str:
    height, width = result.frames.shape[1:3]
    return f"{width}x{height}"
