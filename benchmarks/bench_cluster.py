"""The Ray cluster backend on one machine: scaling, the coordinator's own cost, Ray's own cost.

Three figures, each on a private local Ray (``address = "local"``) that fakes GPUs
(``num_gpus = 8``) so one worker per fake GPU runs the stub generator, which only sleeps
S seconds a job like a GPU would (its frames are made first, at no cost worth counting):

1. Scaling: N = 1, 2, 4, 8 workers, 4 jobs per worker, through the whole daemon (``Service``:
   claims, prepare, workers, publish, status, share page). Jobs per second against the ideal
   N / S, and the efficiency (ideal time / measured time), from the first job submitted to the
   last one filed. The backlog is dropped before the start with ``settle_seconds = 0`` (the
   hot folder's readiness wait is not what is measured here) and only the master clip is made.
2. The coordinator's own cost per job with encoding on the workers: CPU time of the daemon's
   process over a backlog (claim, prepare, publish the files, status, the share page, the inbox
   scanner and the Ray calls), and the wall and CPU time of each phase on the thread that runs
   it. The daemon runs as users run it here: the inbox watched (inotify) and polled at the
   shipped ``poll_interval``; only the readiness wait is left out, as above.
3. Ray's own start time and memory on this machine: ``ray.init``, the RSS of Ray's processes
   with no worker, and per worker (the stub: what a worker costs before any model).

    python benchmarks/bench_cluster.py                 # all three, S = 2 s
    python benchmarks/bench_cluster.py --quick         # N = 1, 2 only, S = 1 s, 60-job backlog
    python benchmarks/bench_cluster.py --only cost --repeat 3   # the coordinator's cost, median of 3

Each run of the cost figure after the first is made in a fresh process: a private Ray cannot be
started twice in one (its token is read once, when Ray is imported).

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from daemon.config import Settings, load_settings  # noqa: E402


def settings(root: Path, model: str, workers: int, recipes: list[str], poll: float = 0.2) -> Settings:
    path = root / "config.toml"
    path.write_text(
        f"""[model]
id = "{model}"
[watch]
settle_seconds = 0
pair_timeout = 0
poll_interval = {poll}
[generation]
num_frames = 2
steps = 4
resolution = "512p"
[output]
default_recipes = {recipes!r}
[cluster]
backend = "ray"
workers = {workers}
gpus_per_worker = 1
cpus_per_worker = 0
""".replace("'", '"')
    )
    return load_settings(path)


def drop(inbox: Path, count: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (96, 64), (30, 90, 150))
    for i in range(count):
        image.save(inbox / f"job{i:04d}.png")
        (inbox / f"job{i:04d}.txt").write_text("waves")


class Clock:
    """A listener noting when the first job was running and when each job was filed."""

    def __init__(self) -> None:
        self.first_running: float | None = None
        self.finished: list[float] = []

    def on_status(self, status: dict[str, Any]) -> None:
        if self.first_running is None and status.get("in_flight"):
            self.first_running = time.monotonic()

    def on_job_finished(self, event: Any) -> None:
        self.finished.append(time.monotonic())

    def close(self) -> None:
        pass


def scaling(n: int, seconds: float, per_worker: int) -> dict[str, float]:
    from daemon.cluster.ray_executor import RayExecutor
    from daemon.service.loop import Service

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        cfg = settings(root, f"stub:{seconds}", n, [])
        jobs = n * per_worker
        drop(cfg.paths.inbox, jobs)
        clock = Clock()
        executor = RayExecutor(cfg, ray_options={"num_cpus": 2, "num_gpus": 8})
        service = Service(cfg, executor, watch=False, listeners=[clock])  # type: ignore[list-item]
        results = service.run_once()
        assert len(results) == jobs and all(r.ok for r in results), "every job must be done"
        assert clock.first_running is not None
        elapsed = max(clock.finished) - clock.first_running
        ideal = per_worker * seconds
        encode = [r.record.timings.encode_seconds or 0 for r in results if r.record is not None]
        return {
            "encode": sum(encode) / len(encode),
            "jobs": jobs,
            "elapsed": elapsed,
            "rate": jobs / elapsed,
            "ideal_rate": n / seconds,
            "efficiency": ideal / elapsed,
            # The worker's own encode is work too (on its machine's CPUs, beside the GPU).
            "efficiency_with_encode": per_worker * (seconds + sum(encode) / len(encode)) / elapsed,
        }


def timed(target: Any, name: str, totals: dict[str, float], cpu: dict[str, float]) -> Callable[[], None]:
    """Wrap ``target.name`` to add its wall time to ``totals[name]`` and the CPU time of the thread
    that ran it to ``cpu[name]``; returns the undo."""
    original = getattr(target, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started
            cpu[name] += time.thread_time() - started_cpu

    setattr(target, name, wrapper)
    return lambda: setattr(target, name, original)


def coordinator_cost(jobs: int, workers: int, base: Path) -> dict[str, Any]:
    """One run in a new folder under ``base``, left there: ``main`` removes them all after the
    last run. Removed at once, one run's few thousand files would slow the next run's file
    creation (ext4 skips inodes freed in the last minutes when it allocates new ones, at a
    cost per inode skipped), and the figure would tell the order of the runs, not the code."""
    from daemon.cluster.ray_executor import RayExecutor
    from daemon.service import filing, job_flow, publishing
    from daemon.service.flights import Flights
    from daemon.service.loop import Service

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=base))
    shipped = tomllib.loads((ROOT / "config.example.toml").read_text())["watch"]["poll_interval"]
    cfg = settings(root, "stub:0", workers, ["poster", "h264"], poll=shipped)
    drop(cfg.paths.inbox, jobs)
    clock = Clock()
    executor = RayExecutor(cfg, ray_options={"num_cpus": 2, "num_gpus": 8})
    wall: dict[str, float] = defaultdict(float)
    thread_cpu: dict[str, float] = defaultdict(float)
    # The phases of a job in the coordinator, each on the thread that runs it: claim, prepare
    # and the hand-over to Ray (submit; _outcome, the result back) on the loop; publishing the
    # worker's files and moving the inputs (_file) on the filing thread; status.json and the
    # share page when due (publish).
    undo = [
        timed(job_flow, "claim", wall, thread_cpu),
        timed(job_flow, "prepare", wall, thread_cpu),
        timed(Flights, "submit", wall, thread_cpu),
        timed(Flights, "_outcome", wall, thread_cpu),
        timed(filing.Filer, "_file", wall, thread_cpu),
        timed(publishing.Publisher, "publish", wall, thread_cpu),
    ]
    service = Service(cfg, executor, watch=True, listeners=[clock])  # type: ignore[list-item]
    cpu: list[float] = []
    original_setup = service.setup

    def setup() -> None:
        original_setup()
        cpu.append(time.process_time())  # after Ray and the workers started

    service.setup = setup  # type: ignore[method-assign]
    try:
        results = service.run_once()
    finally:
        for u in undo:
            u()
    cpu_after = time.process_time()
    assert len(results) == jobs and all(r.ok for r in results)
    assert clock.first_running is not None
    elapsed = max(clock.finished) - clock.first_running
    total_cpu = cpu_after - cpu[0]
    return {
        "jobs": jobs,
        "rate": jobs / elapsed,
        "cpu_ms_per_job": 1000 * total_cpu / jobs,
        # The rest: Ray's own threads, the inbox scanner, the log.
        "other_cpu_ms_per_job": 1000 * (total_cpu - sum(thread_cpu.values())) / jobs,
        "phases": {k: (1000 * wall[k] / jobs, 1000 * thread_cpu[k] / jobs) for k in wall},
    }


def coordinator_cost_apart(quick: bool, base: Path) -> dict[str, Any]:
    """``coordinator_cost`` in a fresh process (``--cost-json``): its figures."""
    command = [sys.executable, __file__, "--only", "cost", "--cost-json", str(base)]
    command += ["--quick"] if quick else []
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def ray_cost(workers: int) -> dict[str, float]:
    import psutil
    import ray

    from daemon.cluster.worker import ClusterWorker
    from daemon.config_sections import ModelConfig

    me = psutil.Process()

    def rss() -> float:
        total = 0
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total / 2**20

    temp = tempfile.mkdtemp(prefix="i2vd-ray-")
    started = time.monotonic()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=8,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
        configure_logging=False,
    )
    init_s = time.monotonic() - started
    time.sleep(2)  # let Ray's helpers finish starting
    head = rss()
    remote = ray.remote(ClusterWorker)
    started = time.monotonic()
    actors = [
        remote.options(num_gpus=1, num_cpus=0, max_concurrency=3).remote(
            f"ray-{i}", ModelConfig(id="stub"), temp, None, None
        )
        for i in range(workers)
    ]
    ray.get([a.info.remote() for a in actors])
    workers_s = time.monotonic() - started
    time.sleep(1)
    with_workers = rss()
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    return {
        "init_s": init_s,
        "head_mib": head,
        "workers_s": workers_s,
        "per_worker_mib": (with_workers - head) / workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="stub seconds a job (S)")
    parser.add_argument("--only", choices=["scaling", "cost", "ray"], default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs of the cost figure (the median is shown)")
    # One run of the cost figure, in a folder under this one, printed as JSON.
    parser.add_argument("--cost-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    sizes = [1, 2] if args.quick else [1, 2, 4, 8]
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.only in (None, "ray"):
        r = ray_cost(workers=4)
        print(
            f"ray: init {r['init_s']:.1f} s, head processes {r['head_mib']:.0f} MiB RSS, "
            f"4 stub workers up in {r['workers_s']:.1f} s, {r['per_worker_mib']:.0f} MiB each"
        )
    if args.only in (None, "scaling"):
        print(f"scaling: stub workers sleeping S = {seconds:g} s a job, 4 jobs per worker")
        print(
            f"{'N':>3} {'jobs':>5} {'seconds':>8} {'jobs/s':>7} {'N/S':>6} {'efficiency':>10}"
            f" {'encode s':>9} {'eff. incl. encode':>17}"
        )
        for n in sizes:
            r = scaling(n, seconds, per_worker=4)
            print(
                f"{n:>3} {r['jobs']:>5.0f} {r['elapsed']:>8.2f} {r['rate']:>7.2f} {r['ideal_rate']:>6.2f}"
                f" {r['efficiency']:>10.2f} {r['encode']:>9.2f} {r['efficiency_with_encode']:>17.2f}"
            )
    if args.only in (None, "cost"):
        from daemon import logs

        logs.configure(json_lines=True)  # as under systemd: a terminal's coloured lines cost more
        jobs = 60 if args.quick else 200
        if args.cost_json:
            print(json.dumps(coordinator_cost(jobs, workers=8, base=args.cost_json)))
            return
        base = Path(tempfile.mkdtemp(prefix="bench-cost-"))
        try:
            runs = [coordinator_cost(jobs, workers=8, base=base)]
            runs += [coordinator_cost_apart(args.quick, base) for _ in range(args.repeat - 1)]
        finally:
            shutil.rmtree(base, ignore_errors=True)
        cpus = [r["cpu_ms_per_job"] for r in runs]
        r = sorted(runs, key=lambda r: r["cpu_ms_per_job"])[len(runs) // 2]  # the median run
        parts = ", ".join(f"{k} {w:.1f} ({c:.1f} CPU)" for k, (w, c) in r["phases"].items())
        print(
            f"coordinator: {jobs} jobs of stub:0 on 8 workers that encode (poster + h264), "
            f"{len(runs)} run(s): {', '.join(f'{c:.1f}' for c in cpus)} ms CPU per job in the daemon's "
            f"process; median run {r['cpu_ms_per_job']:.1f} ms, {r['rate']:.1f} jobs/s; "
            f"ms per job: {parts}; other threads (Ray, scanner, log) {r['other_cpu_ms_per_job']:.1f} CPU"
        )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
