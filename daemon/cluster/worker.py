"""One cluster worker: a Ray actor that holds the model on one GPU and makes one clip at a time.

This module does not import Ray: ``daemon.cluster.pool`` wraps ``ClusterWorker`` in ``ray.remote`` with
the GPUs, CPUs and restarts the config asks for. The actor is threaded (``max_concurrency``):
``run`` makes a clip in one thread while ``progress`` and ``abort`` answer from another, so the
coordinator can follow the steps and interrupt a cold-stopped job between two of them.

What travels: the request (the prepared image and the job's parameters) and the recipes in;
the finished, verified files out (``EncodedFiles``, a few MB), or the raw frames when no
recipes were given. The worker never sees the share.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.engine.interface import GenerationRequest, Generator, ModelInfo


class WorkerCancelled(Exception):
    """The coordinator asked this worker to stop the job (a cold stop, or ``stop_job``)."""


@dataclass(frozen=True)
class WorkerInfo:
    """What ``i2vd check``, status and JOB.json say of a worker."""

    name: str
    host: str
    device: str  # the GPU's name (and Ray's GPU ids), or "cpu"
    pid: int
    node_id: str
    model: ModelInfo | None  # None: the model could not be loaded here
    engine: dict[str, Any]
    error: str | None  # why the model could not be loaded
    load_seconds: float


@dataclass(frozen=True)
class Made:
    """One clip made by a worker: what the engine ran, and the files (or the frames)."""

    record: dict[str, Any]
    shape: tuple[int, int, int, int]  # frames, height, width, 3
    encoded: Any  # EncodedFiles, or None when the frames are sent
    frames: np.ndarray | None
    generate_seconds: float


class ClusterWorker:
    """The model loaded once (and warmed up), then ``run`` for each job, one at a time."""

    def __init__(
        self,
        name: str,
        model: Any,  # daemon.config.ModelConfig
        cache_dir: str,
        warm_up: tuple[int, int] | None,
        ffmpeg: str | None,
        loras: Any = None,  # daemon.config's [loras] table: the adapters the model may use
    ) -> None:
        self.name = name
        self._ffmpeg = ffmpeg
        self._gen: Generator | None = None
        self._error: str | None = None
        self._progress: tuple[str | None, int | None, int | None] = (None, None, None)
        self._abort = threading.Event()
        self._stop_job: str | None = None  # the one job to stop (over the time cap)
        self._busy = threading.Lock()
        started = time.monotonic()
        try:
            self._gen = _load(model, loras, Path(cache_dir))
            if warm_up is not None:
                self._gen.warm_up(short_side=warm_up[0], num_frames=warm_up[1])
        except Exception as e:
            # Kept and reported (``info``), not raised: an actor that fails in __init__ would be
            # restarted by Ray to fail the same way, and the coordinator would never hear why.
            self._error = f"{type(e).__name__}: {e}"
            self._gen = None
        self._load_seconds = time.monotonic() - started
        self._device = _device_label(self._gen)

    def info(self) -> WorkerInfo:
        import ray

        return WorkerInfo(
            name=self.name,
            host=platform.node(),
            device=self._device,
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            model=self._gen.info if self._gen is not None else None,
            engine=dict(self._gen.engine) if self._gen is not None else {},
            error=self._error,
            load_seconds=self._load_seconds,
        )

    def progress(self) -> tuple[str | None, int | None, int | None]:
        """(job, step, total) of the job running now; (None, None, None) when idle."""
        return self._progress

    def abort(self) -> None:
        """Cold stop: the job running now (or the next one to start) ends with ``WorkerCancelled``.

        Stays set: after a cold stop the coordinator closes and sends nothing more.
        """
        self._abort.set()

    def stop_job(self, job: str) -> None:
        """Stop ``job`` between two steps if it is running here (or is the next to start); others go on."""
        self._stop_job = job

    def run(self, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None) -> Made:
        if self._gen is None:
            raise RuntimeError(f"worker {self.name} has no model: {self._error}")
        with self._busy:
            return self._run(self._gen, job, request, recipes)

    def _run(
        self, gen: Generator, job: str, request: GenerationRequest, recipes: Mapping[str, Any] | None
    ) -> Made:
        if self._abort.is_set() or self._stop_job == job:
            raise WorkerCancelled()

        def on_step(step: int, total: int) -> None:
            if self._abort.is_set() or self._stop_job == job:
                raise WorkerCancelled()
            self._progress = (job, step, total)

        self._progress = (job, 0, None)
        try:
            started = time.monotonic()
            result = gen.generate(request, on_step)
            seconds = time.monotonic() - started
            frames = result.frames
            shape = (int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2]), 3)
            if recipes is None:
                return Made(dict(result.record), shape, None, frames, seconds)
            encoded = _encode(frames, request.fps, job, recipes, self._ffmpeg)
            return Made(dict(result.record), shape, encoded, None, seconds)
        finally:
            self._progress = (None, None, None)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def _load(model: Any, loras: Any, cache_dir: Path) -> Generator:
    from daemon.engine.generator import load_generator
    from daemon.engine.options import EngineOptions

    return load_generator(
        model.id,
        revision=model.revision,
        device=model.device,
        dtype=model.dtype,
        cache_dir=cache_dir,
        options=EngineOptions.from_config(model, loras),
        family=model.family,
    )


def _device_label(gen: Generator | None) -> str:
    """The GPU's name for status and JOB.json, with the ids Ray gave this worker."""
    import ray

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    device = gen.info.device if gen is not None else "none"
    if device.startswith("cuda"):
        try:
            from daemon.engine.load import gpu_name

            return f"{gpu_name(device)} (GPU {ids or device})"
        except Exception:
            pass
    # On a machine without CUDA Ray still hands out the GPUs it was told of (tests fake them).
    return f"{device} (Ray GPU {ids})" if ids else device


def _encode(frames: np.ndarray, fps: int, job: str, recipes: Mapping[str, Any], ffmpeg: str | None) -> Any:
    """The same one-pass encode as the filing thread's, in a folder of this worker's own."""
    from daemon.encode.ffmpeg import select_ffmpeg
    from daemon.encode.onepass import encode_job
    from daemon.job.encoded import EncodedFiles

    exe = select_ffmpeg(ffmpeg)
    with tempfile.TemporaryDirectory(prefix="i2vd-worker-") as folder:
        enc = encode_job(frames, fps, Path(folder), job, dict(recipes), ffmpeg=exe)
        return EncodedFiles.collect(enc, exe.version)
