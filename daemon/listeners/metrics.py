"""An optional Prometheus endpoint (``[metrics] address``), fed by the main loop's events.

prometheus-client's own HTTP server runs in its own thread; the listener only updates
in-memory counters, so the generation loop never waits on a scrape. The metrics live in
a private CollectorRegistry rather than the library's global one: two daemons in one
process (tests) do not clash, and a plug-in registering its own metrics cannot change ours.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from daemon import __version__, logs
from daemon.config_service import parse_address
from daemon.listeners.events import JobFinished
from daemon.states import UP, Outcome

# A tiny model on a CPU takes seconds, i2vgen-xl at 1024p on a GPU minutes.
GENERATE_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)
# The master clip and a few recipes: well under a second to a few minutes for long GIFs.
ENCODE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class MetricsListener:
    """Serves the metrics at ``address`` from construction until ``close()``.

    Port 0 picks a free port (see ``port``). Raises OSError when the address is taken,
    which the caller reports as a start-up error rather than running without metrics.
    """

    def __init__(self, address: str, *, gpu: bool = True) -> None:
        host, port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            "i2vd_jobs", "Jobs finished, by outcome (done or failed).", ["outcome"], registry=r
        )
        for outcome in ("done", "failed"):
            # Both series exist from the start: rate() and absent() alerts need a zero to begin from.
            self.jobs.labels(outcome=outcome)
        self.recipes = Counter(
            "i2vd_recipes",
            "Recipe outputs made for done jobs, by recipe and outcome.",
            ["recipe", "outcome"],
            registry=r,
        )
        self.generate_seconds = Histogram(
            "i2vd_generate_seconds", "Time the model took per done job.", buckets=GENERATE_BUCKETS, registry=r
        )
        self.encode_seconds = Histogram(
            "i2vd_encode_seconds",
            "Time encoding (master clip and recipes) took per done job.",
            buckets=ENCODE_BUCKETS,
            registry=r,
        )
        self.queue = Gauge("i2vd_queue_jobs", "Jobs ready in the inbox and waiting their turn.", registry=r)
        self.busy = Gauge("i2vd_busy", "1 while a job is being made, else 0.", registry=r)
        self.step = Gauge("i2vd_current_job_step", "Denoising steps done in the current job.", registry=r)
        self.total = Gauge("i2vd_current_job_steps_total", "Denoising steps of the current job.", registry=r)
        self.eta = Gauge(
            "i2vd_current_job_eta_seconds", "Estimated seconds left in the current job.", registry=r
        )
        self.last_finished = Gauge(
            "i2vd_last_job_finished_timestamp_seconds", "Unix time the last job was filed.", registry=r
        )
        self.gpu_allocated = Gauge(
            "i2vd_gpu_memory_allocated_bytes", "GPU memory held by tensors now.", ["device"], registry=r
        )
        self.gpu_max = Gauge(
            "i2vd_gpu_memory_max_allocated_bytes",
            "Peak GPU memory held by tensors since start.",
            ["device"],
            registry=r,
        )
        # One series per worker (one "local" worker without a cluster): which are up, and each one's job.
        self.worker_up = Gauge(
            "i2vd_worker_up",
            "1 while the worker has the model loaded (idle or busy), 0 while lost or loading.",
            ["worker", "host", "device"],
            registry=r,
        )
        self.worker_step = Gauge(
            "i2vd_worker_job_step",
            "Denoising steps done in the worker's current job.",
            ["worker"],
            registry=r,
        )
        self.worker_total = Gauge(
            "i2vd_worker_job_steps_total",
            "Denoising steps of the worker's current job.",
            ["worker"],
            registry=r,
        )
        self.disk_free = Gauge(
            "i2vd_disk_free_bytes",
            "Free space on the disks the daemon writes to (outputs/, the state folder), to the MB.",
            ["path"],
            registry=r,
        )
        self.disk_full = Gauge(
            "i2vd_waiting_for_disk",
            "1 while new jobs wait because the disk is nearly full ([limits] min_free_mb), else 0.",
            registry=r,
        )
        self.paused = Gauge(
            "i2vd_paused",
            "1 while i2vd pause holds new jobs back (the jobs in progress finish), else 0.",
            registry=r,
        )
        self.paused_since = Gauge(
            "i2vd_paused_since_timestamp_seconds", "Unix time i2vd pause was run (0: not paused).", registry=r
        )
        self.outside_hours = Gauge(
            "i2vd_outside_active_hours",
            "1 while new jobs wait for [queue] active_hours to open, else 0.",
            registry=r,
        )
        Info("i2vd_build", "The i2vd version.", registry=r).info({"version": __version__})
        self._gpu = gpu
        self._lock = threading.Lock()
        self._server, thread = start_http_server(port, host, registry=r)
        self._thread: threading.Thread | None = thread
        self.port: int = self._server.server_port
        logs.get().info("metrics endpoint listening", address=f"{host}:{self.port}")

    def on_status(self, status: dict[str, Any]) -> None:
        try:
            self.queue.set(float(status.get("queue_length") or 0))
            current = status.get("current") or {}
            self.busy.set(1 if current else 0)
            self.step.set(float(current.get("step") or 0))
            self.total.set(float(current.get("total") or 0))
            eta = current.get("eta_seconds")
            self.eta.set(float(eta) if eta is not None else 0)
            self._workers(status)
            self.disk_full.set(1 if status.get("paused_reason") else 0)
            self._held(status)
            for path, mb in (status.get("disk_free_mb") or {}).items():
                self.disk_free.labels(path=str(path)).set(float(mb) * 1024 * 1024)
            self._sample_gpu()
        except Exception as e:  # a listener must never break the loop
            logs.get().warning("metrics update failed", error=str(e))

    def _held(self, status: dict[str, Any]) -> None:
        paused = status.get("paused")
        self.paused.set(1 if paused else 0)
        since = 0.0
        if isinstance(paused, dict):
            with contextlib.suppress(TypeError, ValueError):
                since = datetime.fromisoformat(str(paused.get("since"))).timestamp()
        self.paused_since.set(since)
        hours = status.get("active_hours")
        self.outside_hours.set(1 if isinstance(hours, dict) and not hours.get("open") else 0)

    def _workers(self, status: dict[str, Any]) -> None:
        running = status.get("in_flight")
        steps = {r.get("worker"): r for r in running if r.get("worker")} if isinstance(running, list) else {}
        for w in status.get("workers") or []:
            name = str(w.get("name"))
            up = w.get("state") in UP
            self.worker_up.labels(worker=name, host=str(w.get("host")), device=str(w.get("device"))).set(up)
            run = steps.get(name) or {}
            self.worker_step.labels(worker=name).set(float(run.get("step") or 0))
            self.worker_total.labels(worker=name).set(float(run.get("total") or 0))

    def on_job_finished(self, event: JobFinished) -> None:
        try:
            self.jobs.labels(outcome=event.outcome).inc()
            self.last_finished.set_to_current_time()
            record = event.record
            if record is None:
                return
            if record.timings.generate_seconds is not None:
                self.generate_seconds.observe(record.timings.generate_seconds)
            if record.timings.encode_seconds is not None:
                self.encode_seconds.observe(record.timings.encode_seconds)
            for name, result in record.recipes.items():
                self.recipes.labels(recipe=name, outcome=Outcome.DONE if result.ok else Outcome.FAILED).inc()
        except Exception as e:
            logs.get().warning("metrics update failed", job=event.job, error=str(e))

    def _sample_gpu(self) -> None:
        # Read torch only if the daemon already imported it, and CUDA only once the model
        # put something there: a metrics read must not create a CUDA context by itself.
        torch: Any = sys.modules.get("torch")
        if not self._gpu or torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            self.gpu_allocated.labels(device=device).set(torch.cuda.memory_allocated(index))
            self.gpu_max.labels(device=device).set(torch.cuda.max_memory_allocated(index))

    def close(self) -> None:
        with self._lock:
            if self._thread is None:
                return
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._thread = None
