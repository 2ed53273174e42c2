"""The workers: one Ray actor (``daemon.cluster.worker``) per GPU, started, watched and restarted.

``WorkerPool`` keeps every worker and every call in flight to one. Each call's answer wakes the
dispatcher's thread when it arrives (a callback Ray runs, see ``call``), so that thread sleeps
between answers instead of polling Ray, and hands a finished job's worker the next job at once.
It starts workers for the GPUs the cluster offers and none uses yet
(``scale``), hears whether each loaded the model (``loaded``), polls busy workers for their step
and idle ones for their life (``ask_progress``, ``progressed``), and follows a worker whose
process died through Ray's restart. A worker that cannot load the model is reported
(``WorkerState.error``) and left out; one gone for good makes room for a new one. Which job runs
on which worker is ``daemon.cluster.dispatch``'s: this module keeps workers, not jobs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from daemon.cluster.connection import RayConnection
from daemon.cluster.worker import ClusterWorker, WorkerInfo
from daemon.config import Settings
from daemon.engine.interface import GenerationRequest, GenerationResult, ModelInfo
from daemon.service.executor import ProgressBoard, WorkerState

# How often busy workers are asked for their step (from this long after the job went to them: a
# job done sooner is never asked), idle ones whether they live, and the cluster for new GPUs.
# Steps take seconds on a GPU and status.json says them at most once a second; each ask is a Ray
# call, which was most of the coordinator's cost per job when asked twice a second.
PROGRESS_EVERY = 2.0
IDLE_CHECK_EVERY = 5.0
# A worker that could not even be created (or died before it ever answered) is not started
# again on that node before this many seconds: no storm of actors that cannot live there.
RESPAWN_BACKOFF = 60.0
RESOURCES_EVERY = 10.0
# Calls a worker answers at once: ``run`` in one thread, ``progress``/``abort``/``info`` in others.
ACTOR_THREADS = 3


@dataclass
class Task:
    """A job on its way to a worker: what it asks for, and where its result goes."""

    job: str
    request: GenerationRequest
    recipes: Mapping[str, Any] | None
    future: Future[GenerationResult]


@dataclass
class Worker:
    name: str
    actor: Any
    node: str | None = None  # the Ray node it is pinned to (workers = "auto")
    state: str = "loading"  # "loading", "idle", "busy", "lost" (restarting), "failed" (no model)
    info: WorkerInfo | None = None
    task: Task | None = None
    progress_asked: float = 0.0
    refs: set[Any] = field(default_factory=set)


class WorkerPool:
    """The executor's workers and the calls in flight to them; ``lock`` guards both."""

    def __init__(
        self, settings: Settings, connection: RayConnection, *, board: ProgressBoard, log: Any
    ) -> None:
        self.settings = settings
        self.config = settings.cluster
        self.board = board
        self._connection = connection
        self._log = log
        self.lock = threading.RLock()
        self.workers: dict[str, Worker] = {}
        # Each call's answer, a Future Ray completes -> (kind, worker, the call's ObjectRef). The
        # ref is held here until the answer is handled: Ray keeps an object only while a ref to it
        # lives, and would never complete the Future of one dropped.
        self.calls: dict[Future[Any], tuple[str, Worker, Any]] = {}
        # Answers that arrived and are not handled yet; ``wake`` is set with each (and on closing).
        self._answered: deque[Future[Any]] = deque()
        self.wake = threading.Event()
        self.model: ModelInfo | None = None  # the first loaded worker's
        # Set by the executor: no worker is started once it is closing or cancelled.
        self.closing = threading.Event()
        self.aborted = False
        # When the cluster was last asked for GPUs (0: ask at the next chance).
        self.resources_at = 0.0
        self._stillborn: dict[str | None, float] = {}  # node -> when a worker there died unborn
        self._spawned = 0
        self._warm_up: tuple[int, int] | None = None
        self._remote: Any = None

    @property
    def capacity(self) -> int:
        with self.lock:
            return sum(1 for w in self.workers.values() if w.state in ("idle", "busy"))

    def listing(self) -> list[tuple[str, str, WorkerInfo | None]]:
        """(name, state, info) of every worker."""
        with self.lock:
            return [(w.name, w.state, w.info) for w in sorted(self.workers.values(), key=lambda w: w.name)]

    def start(self, *, warm_up: tuple[int, int] | None) -> None:
        """Ready to start workers (Ray connected); each warms its model up with ``warm_up``."""
        import ray

        self._warm_up = warm_up
        self._remote = ray.remote(ClusterWorker)

    def kill_all(self) -> None:
        """End every worker's actor for good and forget the calls in flight."""
        import ray

        with self.lock:
            for w in self.workers.values():
                with contextlib.suppress(Exception):
                    ray.kill(w.actor, no_restart=True)
            self.calls.clear()

    def scale(self, *, force: bool = False) -> None:
        """Start workers for GPUs the cluster offers and no worker uses (nodes that joined).

        With ``workers = "auto"`` each worker is pinned to its node, so a worker that failed to
        load the model keeps its node's slot (it is not tried again and again), a restarted one
        comes back on the same machine, and a machine that joins, or joins again (a new node id),
        gets workers of its own.
        """
        now = time.monotonic()
        if not force and now - self.resources_at < RESOURCES_EVERY:
            return
        self.resources_at = now
        if self.closing.is_set() or self.aborted:
            return
        with self.lock:
            if self.config.workers != "auto":
                missing = {None: int(self.config.workers) - len(self.workers)}
            else:
                have: dict[str, int] = {}
                for w in self.workers.values():
                    have[w.node] = have.get(w.node, 0) + 1  # type: ignore[index]
                room = self._connection.room_per_node()
                missing = {node: n - have.get(node, 0) for node, n in room.items()}
            for node, died in list(self._stillborn.items()):
                if now - died < RESPAWN_BACKOFF:
                    missing[node] = 0
            total = sum(n for n in missing.values() if n > 0)
            if total <= 0:
                return
            if self.workers:
                self._log.info("more GPUs in the cluster; starting workers for them", workers=total)
            for node, n in missing.items():
                for _ in range(max(0, n)):
                    self._spawn(node)

    def _spawn(self, node: str | None) -> None:
        name = f"ray-{self._spawned}"
        self._spawned += 1
        cfg, settings = self.config, self.settings
        options: dict[str, Any] = {
            "num_gpus": cfg.gpus_per_worker,
            "num_cpus": cfg.cpus_per_worker,
            "max_restarts": cfg.max_restarts,
            # Ray never runs a job again by itself: the loop does, counting the attempt, so a job
            # is never made twice at once by Ray's retry and ours.
            "max_task_retries": 0,
            "max_concurrency": ACTOR_THREADS,
        }
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        actor = self._remote.options(**options).remote(
            name,
            settings.model,
            str(settings.model_cache_dir),
            self._warm_up,
            str(settings.output.ffmpeg) if settings.output.ffmpeg else None,
            settings.loras,
        )
        worker = Worker(name, actor, node=node)
        self.workers[name] = worker
        self.call("info", worker, actor.info.remote())
        self.board.put(WorkerState(name, host="?", device="?", state="loading"))

    def call(self, kind: str, worker: Worker, ref: Any) -> None:
        """Follow ``ref``, a ``kind`` call ("run", "info", "progress") to ``worker``, until it answers.

        Its answer comes as a Future that Ray completes on a thread of its own; the callback only
        queues it and sets ``wake`` (it takes no lock: Ray's thread must never wait on ours).
        """
        answer: Future[Any] = ref.future()
        self.calls[answer] = (kind, worker, ref)
        answer.add_done_callback(self._arrived)

    def _arrived(self, answer: Future[Any]) -> None:
        self._answered.append(answer)
        self.wake.set()

    def stop_waiting(self) -> None:
        """The pool is closing: the dispatcher's wait for answers ends now."""
        self.closing.set()
        self.wake.set()

    def answers(self, timeout: float) -> Iterator[tuple[str, Worker, Future[Any]]]:
        """(kind, worker, answer) of each call that answered, waiting up to ``timeout`` for one.

        ``answer`` is done: its ``result()`` is the call's return value, or raises what
        ``ray.get`` would (the task's error as an instance of its cause, or Ray's own error).
        """
        if not self._answered:
            self.wake.wait(timeout)
        self.wake.clear()
        while self._answered:
            answer = self._answered.popleft()
            with self.lock:
                call = self.calls.pop(answer, None)
            if call is not None:  # else forgotten meanwhile (``kill_all``)
                yield call[0], call[1], answer

    def restarting(self, worker: Worker) -> None:
        """``worker``'s process died: Ray restarts it, and ``info`` answers once it is back (model
        loaded again), or raises if it is gone for good."""
        with self.lock:
            self.board.update(worker.name, state="lost", error="its process died; restarting")
            self.call("info", worker, worker.actor.info.remote())

    def loaded(self, worker: Worker, answer: Future[Any]) -> bool:
        """A worker answered ``info``: the model is loaded (or failed to load), or it is gone.

        True when the worker is now idle, ready for a job."""
        import ray
        from ray.exceptions import ActorUnavailableError

        try:
            info: WorkerInfo = answer.result()
        except ActorUnavailableError:
            time.sleep(0.2)  # still restarting: ask again shortly
            with self.lock:
                if not self.closing.is_set():
                    self.call("info", worker, worker.actor.info.remote())
            return False
        except Exception as e:
            # Restarts used up (or its machine left): gone for good. With workers = "auto" a worker
            # is started again for the GPU if the cluster still offers it.
            self._log.error("cluster worker gone", worker=worker.name, error=short(e))
            with self.lock:
                if worker.info is None:
                    self._stillborn[worker.node] = time.monotonic()
                self.workers.pop(worker.name, None)
                self.board.update(worker.name, state="lost", job=None, error=f"gone: {short(e)}")
                self.resources_at = 0.0
            return False
        with self.lock:
            worker.info = info
            if info.error is not None or info.model is None:
                worker.state = "failed"
                self._log.error(
                    "cluster worker cannot load the model; left out",
                    worker=worker.name,
                    host=info.host,
                    error=info.error,
                )
                self.board.put(
                    WorkerState(worker.name, info.host, info.device, state="lost", error=info.error)
                )
                # Frees its GPU, but the slot stays counted so no worker is started there again.
                with contextlib.suppress(Exception):
                    ray.kill(worker.actor, no_restart=True)
                return False
            if self.model is None:
                self.model = info.model
            was = worker.state
            worker.state = "idle"
            self.board.put(WorkerState(worker.name, info.host, info.device, state="idle"))
            self._log.info(
                "cluster worker ready" if was == "loading" else "cluster worker back after a restart",
                worker=worker.name,
                host=info.host,
                device=info.device,
                load_seconds=round(info.load_seconds, 1),
            )
            return True

    def ask_progress(self) -> None:
        now = time.monotonic()
        with self.lock:
            asked = {w.name for kind, w, _ in self.calls.values() if kind == "progress"}
            for w in self.workers.values():
                every = PROGRESS_EVERY if w.state == "busy" else IDLE_CHECK_EVERY
                if w.state in ("busy", "idle") and w.name not in asked and now - w.progress_asked >= every:
                    w.progress_asked = now
                    self.call("progress", w, w.actor.progress.remote())

    def progressed(self, worker: Worker, answer: Future[Any]) -> None:
        """A worker answered ``progress``: its job's step goes on the board; no answer from an idle
        worker means its process died."""
        try:
            job, step, total = answer.result()
        except Exception as e:
            with self.lock:
                if worker.state == "idle":
                    # Died between jobs: out of the count until Ray has it back, no job lost.
                    self._log.warning("cluster worker lost while idle", worker=worker.name, error=short(e))
                    worker.state = "lost"
                    self.restarting(worker)
            return  # a busy worker's run call says so
        with self.lock:
            if worker.task is not None and job == worker.task.job and step and total:
                self.board.job_step(worker.name, step, total)


def short(error: BaseException) -> str:
    """``error`` on one line of at most 200 characters, for a log line or the board."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:199] + "…"
