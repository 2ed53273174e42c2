"""The Ray executor: the loop's jobs run on Ray actors, one per GPU, anywhere in a Ray cluster.

The coordinator (``i2vd run``) keeps everything it does with one GPU: folders, claims, recovery,
status, the share page. Only generation moves: ``submit`` hands a job to a free worker
(``daemon.cluster.worker``), which generates and encodes it and sends the files back; the
filing thread publishes them into the claim folder as before.

``RayExecutor`` is the ``Executor`` protocol (``daemon.service.executor``) over three parts:
the connection to Ray (``daemon.cluster.connection``), the workers and their restarts
(``daemon.cluster.pool``), and the jobs' queue and the thread that follows every call in flight
(``daemon.cluster.dispatch``). A worker whose process dies mid-job is restarted by Ray
(``max_restarts``), and its job ends with ``WorkerLost``, which the loop counts as one attempt
and submits again. A worker that cannot load the model is reported (``WorkerState.error``) and
left out. With no worker left, ``capacity`` is 0: the loop claims nothing and jobs wait in the
inbox.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from daemon import logs
from daemon.cluster.connection import RayConnection
from daemon.cluster.dispatch import Dispatcher
from daemon.cluster.pool import Task, WorkerPool
from daemon.cluster.worker import WorkerInfo
from daemon.config import Settings
from daemon.engine.interface import GenerationRequest, GenerationResult, ModelInfo
from daemon.service.executor import ProgressBoard, WorkersUnfit

# While workers load the model (minutes for a large one), a log line this often says so.
WAIT_NOTE_EVERY = 30.0


class RayExecutor:
    """Workers as Ray actors; ``capacity`` is how many of them have the model loaded now."""

    def __init__(
        self,
        settings: Settings,
        *,
        board: ProgressBoard | None = None,
        ray_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``ray_options`` go to ``ray.init`` of a private Ray (``address = "local"``): tests and
        benchmarks fake GPUs on a CPU machine with ``{"num_cpus": 2, "num_gpus": 2}``."""
        self.settings = settings
        self.config = settings.cluster
        self.board = board or ProgressBoard()
        log = self._log = logs.get()
        self._connection = RayConnection(settings, ray_options=ray_options or {}, log=log)
        self._pool = WorkerPool(settings, self._connection, board=self.board, log=log)
        self._dispatcher = Dispatcher(self._pool, board=self.board, log=log)

    @property
    def model(self) -> ModelInfo:
        if self._pool.model is None:
            raise RuntimeError("no cluster worker has loaded the model yet")
        return self._pool.model

    @property
    def capacity(self) -> int:
        return self._pool.capacity

    def start(self, *, warm_up: tuple[int, int] | None, wait_for_machines: bool = True) -> None:
        """Join or start Ray, start the workers and wait until they have loaded the model.

        A cluster without the resources one worker needs fails at once, naming them: a private
        Ray never gains any, and ``wait_for_machines=False`` (``i2vd check``) does not wait for
        GPU machines to join. Otherwise every wait is logged with what it waits for.
        """
        pool = self._pool
        self._connection.connect()
        timeout = self.config.start_timeout
        shortfall = self._connection.shortfall()
        if shortfall is not None and (self.config.address == "local" or not wait_for_machines):
            self.close()
            raise WorkersUnfit(shortfall)
        pool.start(warm_up=warm_up)
        pool.scale(force=True)
        deadline = time.monotonic() + timeout
        told = 0.0
        while time.monotonic() < deadline:
            self._dispatcher.round(0.2)
            with pool.lock:
                states = [w.state for w in pool.workers.values()]
            if states and "loading" not in states:
                break
            if not states and time.monotonic() - pool.resources_at > 2.0:
                pool.scale(force=True)  # no room in the cluster yet: look again
            if time.monotonic() - told >= WAIT_NOTE_EVERY:
                told = time.monotonic()
                if states:
                    self._log.info(
                        "waiting for the cluster workers to load the model",
                        loading=states.count("loading"),
                        workers=len(states),
                        seconds_left=round(deadline - told),
                    )
                else:
                    self._log.warning(
                        "waiting for machines to join the cluster",
                        reason=self._connection.shortfall() or "starting the first workers",
                        seconds_left=round(deadline - told),
                    )
        with pool.lock:
            loaded = [w for w in pool.workers.values() if w.state == "idle"]
            failed = [w for w in pool.workers.values() if w.state == "failed"]
        if not loaded:
            reasons = "; ".join(f"{w.name}: {w.info.error if w.info else '?'}" for w in failed)
            offers = self._connection.shortfall() or f"the cluster offers {self._connection.resources()}"
            self.close()
            if reasons:
                raise RuntimeError(f"no cluster worker could load the model ({reasons})")
            raise RuntimeError(
                f"no cluster worker was ready within cluster.start_timeout ({timeout:g} s): {offers};"
                " check that the GPU machines joined (ray status) and have the resources each worker asks for"
            )
        from daemon.engine.families import defaults_problem

        problem = defaults_problem(self.model.family, self.settings.generation.num_frames)
        if problem is not None:
            self.close()
            raise RuntimeError(problem)
        self._dispatcher.start()

    def submit(
        self, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None = None
    ) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        self._dispatcher.submit(Task(job, request, None if recipes is None else dict(recipes), future))
        return future

    def cancel(self) -> None:
        self._dispatcher.cancel()

    def stop_job(self, job: str, error: str) -> None:
        self._dispatcher.stop_job(job, error)

    def close(self) -> None:
        self._pool.stop_waiting()
        self._dispatcher.stop()
        self._pool.kill_all()
        self._connection.close()

    # -- what ``i2vd check`` shows -------------------------------------------------------

    def workers(self) -> list[tuple[str, str, WorkerInfo | None]]:
        """(name, state, info) of every worker."""
        return self._pool.listing()

    def describe_cluster(self) -> str:
        return self._connection.describe()
