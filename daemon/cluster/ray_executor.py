"""The Ray executor: the loop's jobs run on Ray actors, one per GPU, anywhere in a Ray cluster.

The coordinator (``i2vd run``) keeps everything it does with one GPU: folders, claims, recovery,
status, the share page. Only generation moves: ``submit`` hands a job to a free worker
(``daemon.cluster.worker``), which generates and encodes it and sends the files back; the
filing thread publishes them into the claim folder as before.

One dispatcher thread follows every call in flight with ``ray.wait``: results, the workers'
step-by-step progress (polled from the threaded actors into the ``ProgressBoard``), and
restarts. A worker whose process dies mid-job is restarted by Ray (``max_restarts``), and its
job ends with ``WorkerLost``, which the loop counts as one attempt and submits again. A worker
that cannot load the model is reported (``WorkerState.error``) and left out. With no worker
left, ``capacity`` is 0: the loop claims nothing and jobs wait in the inbox.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon import logs
from daemon.cluster import private
from daemon.cluster.worker import ClusterWorker, Made, WorkerCancelled, WorkerInfo
from daemon.config import Settings
from daemon.engine.interface import GenerationRequest, GenerationResult, ModelInfo
from daemon.errors import JobError
from daemon.service.executor import Cancelled, ProgressBoard, WorkerLost, WorkerState

# How often the dispatcher asks busy workers for their step, idle ones whether they live, and the
# cluster for new GPUs.
PROGRESS_EVERY = 0.5
IDLE_CHECK_EVERY = 5.0
# A worker that could not even be created (or died before it ever answered) is not started
# again on that node before this many seconds: no storm of actors that cannot live there.
RESPAWN_BACKOFF = 60.0
RESOURCES_EVERY = 10.0
# Calls a worker answers at once: ``run`` in one thread, ``progress``/``abort``/``info`` in others.
ACTOR_THREADS = 3


@dataclass
class _Task:
    job: str
    request: GenerationRequest
    recipes: Mapping[str, Any] | None
    future: Future[GenerationResult]


@dataclass
class _Worker:
    name: str
    actor: Any
    node: str | None = None  # the Ray node it is pinned to (workers = "auto")
    state: str = "loading"  # "loading", "idle", "busy", "lost" (restarting), "failed" (no model)
    info: WorkerInfo | None = None
    task: _Task | None = None
    progress_asked: float = 0.0
    refs: set[Any] = field(default_factory=set)


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
        self._ray_options = dict(ray_options or {})
        self._log = logs.get()
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._pending: deque[_Task] = deque()
        self._lost_on: dict[str, set[str]] = {}  # job -> workers that died under it
        self._stillborn: dict[str | None, float] = {}  # node -> when a worker there died unborn
        self._calls: dict[Any, tuple[str, _Worker]] = {}  # ObjectRef -> (kind, worker)
        self._model: ModelInfo | None = None
        self._aborted = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._spawned = 0
        self._warm_up: tuple[int, int] | None = None
        self._temp_dir: str | None = None
        self._connected = False
        self._told_empty = False
        self._resources_at = 0.0
        self._remote: Any = None

    # -- the Executor protocol -----------------------------------------------------------

    @property
    def model(self) -> ModelInfo:
        if self._model is None:
            raise RuntimeError("no cluster worker has loaded the model yet")
        return self._model

    @property
    def capacity(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers.values() if w.state in ("idle", "busy"))

    def start(self, *, warm_up: tuple[int, int] | None) -> None:
        """Join or start Ray, start the workers and wait until they have loaded the model."""
        import ray

        self._warm_up = warm_up
        self._connect(ray)
        self._remote = ray.remote(ClusterWorker)
        self._scale(force=True)
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            self._round(0.2)
            with self._lock:
                states = [w.state for w in self._workers.values()]
            if states and "loading" not in states:
                break
            if not states and time.monotonic() - self._resources_at > 2.0:
                self._scale(force=True)  # no GPU in the cluster yet: look again
        with self._lock:
            loaded = [w for w in self._workers.values() if w.state == "idle"]
            failed = [w for w in self._workers.values() if w.state == "failed"]
        if not loaded:
            reasons = "; ".join(f"{w.name}: {w.info.error if w.info else '?'}" for w in failed)
            self.close()
            if reasons:
                raise RuntimeError(f"no cluster worker could load the model ({reasons})")
            raise RuntimeError(
                f"no cluster worker was ready within cluster.start_timeout ({self.config.start_timeout:g} s):"
                f" the cluster offers {self._describe_resources()}; check that the GPU machines joined"
                " (ray status) and have the resources each worker asks for"
            )
        from daemon.engine.families import defaults_problem

        problem = defaults_problem(self.model.family, self.settings.generation.num_frames)
        if problem is not None:
            self.close()
            raise RuntimeError(problem)
        self._thread = threading.Thread(target=self._dispatch, name="i2vd-ray", daemon=True)
        self._thread.start()

    def submit(
        self, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None = None
    ) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        with self._lock:
            if self._aborted:
                future.set_exception(Cancelled())
                return future
            self._pending.append(_Task(job, request, None if recipes is None else dict(recipes), future))
            self._assign()
        return future

    def cancel(self) -> None:
        with self._lock:
            self._aborted = True
            while self._pending:
                task = self._pending.popleft()
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(Cancelled())
            for w in self._workers.values():
                if w.task is not None:
                    w.actor.abort.remote()

    def close(self) -> None:
        import ray

        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for w in self._workers.values():
                if w.task is not None and not w.task.future.done():
                    w.task.future.set_exception(Cancelled())
                with contextlib.suppress(Exception):
                    ray.kill(w.actor, no_restart=True)
            for task in self._pending:
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(Cancelled())
            self._pending.clear()
            self._calls.clear()
        if self._connected:
            ray.shutdown()  # a private Ray ("local") stops with it; a joined cluster stays up
            self._connected = False
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            private.forget(self.settings.state_dir)

    # -- what ``i2vd check`` shows -------------------------------------------------------

    def workers(self) -> list[tuple[str, str, WorkerInfo | None]]:
        """(name, state, info) of every worker."""
        with self._lock:
            return [(w.name, w.state, w.info) for w in sorted(self._workers.values(), key=lambda w: w.name)]

    def _describe_resources(self) -> str:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        return f"{len(nodes)} node(s), {gpus:g} GPU(s), {cpus:g} CPU(s)"

    def describe_cluster(self) -> str:
        import ray

        where = "a private Ray on this machine" if self.config.address == "local" else self.config.address
        return f"Ray {ray.__version__}, {where}: {self._describe_resources()}"

    # -- Ray -----------------------------------------------------------------------------

    def _connect(self, ray: Any) -> None:
        options: dict[str, Any] = {"namespace": "i2vd", "log_to_driver": False, "configure_logging": False}
        if self.config.address == "local":
            # A private Ray: its own temporary folder, no dashboard, gone when the daemon stops.
            ended = private.reap(self.settings.state_dir)
            if ended:
                self._log.warning("ended what a killed daemon's private Ray left running", pids=ended)
            self._temp_dir = tempfile.mkdtemp(prefix="i2vd-ray-")
            private.note(self.settings.state_dir, self._temp_dir)
            options.update(address="local", include_dashboard=False, _temp_dir=self._temp_dir)
            options.update(self._ray_options)
        else:
            options["address"] = self.config.address
        started = time.monotonic()
        ray.init(**options)
        self._connected = True
        self._log.info(
            "ray connected",
            address=self.config.address,
            seconds=round(time.monotonic() - started, 1),
            resources=self._describe_resources(),
        )

    def _per_node(self) -> dict[str, int]:
        """Workers each live node has room for (``workers = "auto"``): its GPUs / gpus_per_worker,
        or its CPUs / cpus_per_worker when gpus_per_worker = 0, whichever is fewer."""
        import ray

        gpw, cpw = self.config.gpus_per_worker, self.config.cpus_per_worker
        room: dict[str, int] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node["Resources"]
            by_cpu = math.floor(res.get("CPU", 0) / cpw + 1e-9) if cpw > 0 else None
            if gpw > 0:
                n = math.floor(res.get("GPU", 0) / gpw + 1e-9)
                room[node["NodeID"]] = n if by_cpu is None else min(n, by_cpu)
            else:
                room[node["NodeID"]] = by_cpu or 0
        return room

    def _scale(self, *, force: bool = False) -> None:
        """Start workers for GPUs the cluster offers and no worker uses (nodes that joined).

        With ``workers = "auto"`` each worker is pinned to its node, so a worker that failed to
        load the model keeps its node's slot (it is not tried again and again), a restarted one
        comes back on the same machine, and a machine that joins, or joins again (a new node id),
        gets workers of its own.
        """
        now = time.monotonic()
        if not force and now - self._resources_at < RESOURCES_EVERY:
            return
        self._resources_at = now
        if self._closing.is_set() or self._aborted:
            return
        with self._lock:
            if self.config.workers != "auto":
                missing = {None: int(self.config.workers) - len(self._workers)}
            else:
                have: dict[str, int] = {}
                for w in self._workers.values():
                    have[w.node] = have.get(w.node, 0) + 1  # type: ignore[index]
                missing = {node: n - have.get(node, 0) for node, n in self._per_node().items()}
            for node, died in list(self._stillborn.items()):
                if now - died < RESPAWN_BACKOFF:
                    missing[node] = 0
            total = sum(n for n in missing.values() if n > 0)
            if total <= 0:
                return
            if self._workers:
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
        worker = _Worker(name, actor, node=node)
        self._workers[name] = worker
        self._call("info", worker, actor.info.remote())
        self.board.put(WorkerState(name, host="?", device="?", state="loading"))

    def _call(self, kind: str, worker: _Worker, ref: Any) -> None:
        self._calls[ref] = (kind, worker)

    # -- the dispatcher ------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._closing.is_set():
            try:
                self._round(0.1)
                self._ask_progress()
                self._scale()
                self._tell_capacity()
            except Exception:
                # Never let the thread die: the jobs in flight would wait for ever.
                self._log.exception("cluster dispatcher error")
                time.sleep(1.0)

    def _round(self, timeout: float) -> None:
        """Wait up to ``timeout`` for calls to answer, and handle every answer."""
        import ray

        with self._lock:
            refs = list(self._calls)
        if not refs:
            self._closing.wait(timeout)
            return
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            with self._lock:
                kind, worker = self._calls.pop(ref, (None, None))
            if worker is None:
                continue
            if kind == "run":
                self._ran(worker, ref)
            elif kind == "info":
                self._loaded(worker, ref)
            elif kind == "progress":
                self._stepped(worker, ref)

    def _assign(self) -> None:
        """Hand waiting jobs to idle workers (called with the lock held)."""
        idle = [w for w in sorted(self._workers.values(), key=lambda w: w.name) if w.state == "idle"]
        while self._pending and idle:
            task = self._pending.popleft()
            if not task.future.set_running_or_notify_cancel():
                continue
            # A job whose worker died goes to another one if any is free (that one may be the cause).
            died_on = self._lost_on.get(task.job, set())
            worker = min(idle, key=lambda w: w.name in died_on)
            idle.remove(worker)
            worker.state, worker.task = "busy", task
            self._call("run", worker, worker.actor.run.remote(task.job, task.request, task.recipes))
            self.board.job_started(worker.name, task.job)

    def _ran(self, worker: _Worker, ref: Any) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        task = worker.task
        try:
            made: Made = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, WorkerCancelled) or (self._aborted and not isinstance(cause, JobError)):
                error: BaseException = Cancelled()
            elif isinstance(cause, JobError):
                error = cause  # the job's own problem, in the user's words
            else:
                error = RuntimeError(f"worker {worker.name}: {cause!r}")
            self._finish(worker, task, error=error, state="idle")
        except RayError as e:
            # The worker's process died (SIGKILL, out of memory, its machine gone). Ray restarts it
            # (max_restarts); the job is the loop's to submit again, as one more attempt.
            host = worker.info.host if worker.info else "?"
            self._log.warning("cluster worker lost mid-job", worker=worker.name, host=host, error=_short(e))
            if task is not None:
                self._lost_on.setdefault(task.job, set()).add(worker.name)
            lost: BaseException = (
                Cancelled() if self._aborted else WorkerLost(f"worker {worker.name} on {host}")
            )
            self._finish(worker, task, error=lost, state="lost")
            with self._lock:
                self.board.update(worker.name, state="lost", error="its process died; restarting")
                # Answers once the actor is back (model loaded again), or raises if it is gone for good.
                self._call("info", worker, worker.actor.info.remote())
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
        worker: _Worker,
        task: _Task | None,
        *,
        result: GenerationResult | None = None,
        error: BaseException | None = None,
        state: str,
    ) -> None:
        with self._lock:
            worker.task = None
            if worker.state == "busy":
                worker.state = state
            self.board.job_ended(worker.name)
            if state != "idle":
                self.board.update(worker.name, state=state)
            self._assign()
        if task is not None and not task.future.done():
            if error is not None:
                task.future.set_exception(error)
            else:
                task.future.set_result(result)  # type: ignore[arg-type]

    def _loaded(self, worker: _Worker, ref: Any) -> None:
        """A worker answered ``info``: the model is loaded (or failed to load), or it is gone."""
        import ray
        from ray.exceptions import ActorUnavailableError

        try:
            info: WorkerInfo = ray.get(ref)
        except ActorUnavailableError:
            time.sleep(0.2)  # still restarting: ask again shortly
            with self._lock:
                if not self._closing.is_set():
                    self._call("info", worker, worker.actor.info.remote())
            return
        except Exception as e:
            # Restarts used up (or its machine left): gone for good. With workers = "auto" a worker
            # is started again for the GPU if the cluster still offers it.
            self._log.error("cluster worker gone", worker=worker.name, error=_short(e))
            with self._lock:
                if worker.info is None:
                    self._stillborn[worker.node] = time.monotonic()
                self._workers.pop(worker.name, None)
                self.board.update(worker.name, state="lost", job=None, error=f"gone: {_short(e)}")
                self._resources_at = 0.0
            return
        with self._lock:
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
                return
            if self._model is None:
                self._model = info.model
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
            self._assign()

    def _ask_progress(self) -> None:
        now = time.monotonic()
        with self._lock:
            asked = {w.name for kind, w in self._calls.values() if kind == "progress"}
            for w in self._workers.values():
                every = PROGRESS_EVERY if w.state == "busy" else IDLE_CHECK_EVERY
                if w.state in ("busy", "idle") and w.name not in asked and now - w.progress_asked >= every:
                    w.progress_asked = now
                    self._call("progress", w, w.actor.progress.remote())

    def _stepped(self, worker: _Worker, ref: Any) -> None:
        import ray

        try:
            job, step, total = ray.get(ref)
        except Exception as e:
            with self._lock:
                if worker.state == "idle":
                    # Died between jobs: out of the count until Ray has it back, no job lost.
                    self._log.warning("cluster worker lost while idle", worker=worker.name, error=_short(e))
                    worker.state = "lost"
                    self.board.update(worker.name, state="lost", error="its process died; restarting")
                    self._call("info", worker, worker.actor.info.remote())
            return  # a busy worker's run call says so
        with self._lock:
            if worker.task is not None and job == worker.task.job and step and total:
                self.board.job_step(worker.name, step, total)

    def _tell_capacity(self) -> None:
        """One log line when the last worker goes (jobs then wait), one when a worker is back."""
        capacity = self.capacity
        if capacity == 0 and not self._told_empty and not self._aborted:
            self._told_empty = True
            self._log.warning(
                "no cluster worker is available (lost or restarting); new jobs wait in the inbox until one"
                " is back",
                workers=len(self._workers),
            )
        elif capacity > 0 and self._told_empty:
            self._told_empty = False
            self._log.info("cluster workers available again", capacity=capacity)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:199] + "…"
