"""A backlog through the hot folder: 1,000 pairs dropped at once, with no model work.

The real Service runs as ``i2vd run`` runs it (watcher, scanner, claims, the encoder thread,
status and share page), with the ``stub`` generator (no model work), no recipes and 2-frame
512p clips, so what is measured is the hot folder around the model: scanning, readiness,
claiming, filing, and the tiny encode each job still needs.

Figures, per backlog size, each in a fresh process (so peak memory is that run's own):

- jobs per second through the backlog: pairs / (last job filed - drop finished);
- ready-to-claim latency, median and p95. Measured from the outside, not from the daemon's
  own records: a pair becomes ready ``settle_seconds`` after the last write of its last file
  (the time the benchmark's writer recorded); its claim is the moment its files leave the
  inbox, seen by a sampler thread that lists the inbox every 5 ms. In a backlog this is
  mostly queueing behind the jobs before it, so the latency of the *first* pair is given too,
  and a separate "trickle" run drops pairs one at a time into an idle daemon, where the
  latency is the daemon's reaction time alone (inotify versus poll);
- peak RSS of the process (``resource.getrusage``), to show memory does not grow with the
  backlog (100 versus 1,000 pairs).

    python benchmarks/bench_backlog.py                 # 100 and 1,000 pairs, inotify, plus trickle
    python benchmarks/bench_backlog.py --pairs 300 --mode poll
    python benchmarks/bench_backlog.py --quick         # smoke run: 50 pairs, short trickle

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def config_text(mode: str, settle: float, poll: float) -> str:
    return f"""[model]
id = "stub"
device = "cpu"
[watch]
mode = "{mode}"
settle_seconds = {settle}
poll_interval = {poll}
pair_timeout = 600
[generation]
num_frames = 2
steps = 1
resolution = "512p"
[output]
default_recipes = []
"""


class ClaimSampler(threading.Thread):
    """Notes when each watched file name leaves the inbox (listing it every ``every`` seconds)."""

    def __init__(self, inbox: Path, every: float = 0.005) -> None:
        super().__init__(name="claim-sampler", daemon=True)
        self.inbox = inbox
        self.every = every
        self.present: set[str] = set()
        self.gone_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.closing = threading.Event()

    def expect(self, name: str) -> None:
        with self.lock:
            self.present.add(name)

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                now_there = set(os.listdir(self.inbox))
            except OSError:
                now_there = set()
            t = time.monotonic()
            with self.lock:
                for name in [n for n in self.present if n not in now_there]:
                    self.present.discard(name)
                    self.gone_at[name] = t
            time.sleep(self.every)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def run_child(pairs: int, mode: str, settle: float, poll: float, trickle: int, trickle_gap: float) -> dict:
    """One measurement in this process: a backlog of ``pairs``, or a trickle when pairs == 0."""
    from daemon import logs
    from daemon.config import load_settings
    from daemon.engine.stub import StubGenerator
    from daemon.service.loop import Service

    logs.configure(stream=open(os.devnull, "w"), json_lines=True)  # noqa: SIM115 - for the whole run
    with tempfile.TemporaryDirectory(prefix="i2vd-backlog-") as tmp:
        root = Path(tmp)
        (root / "config.toml").write_text(config_text(mode, settle, poll))
        settings = load_settings(root / "config.toml")
        inbox, done = settings.paths.inbox, settings.paths.done
        inbox.mkdir()
        service = Service(settings, StubGenerator())
        runner = threading.Thread(target=service.run, name="daemon", daemon=True)
        runner.start()
        while service._lock is None and runner.is_alive():  # wait for set-up to finish
            time.sleep(0.01)
        time.sleep(0.5)
        sampler = ClaimSampler(inbox)
        sampler.start()
        image = png_bytes()
        ready_at: dict[str, float] = {}

        def drop(name: str) -> None:
            (inbox / f"{name}.png").write_bytes(image)
            (inbox / f"{name}.txt").write_text("waves roll in")
            ready_at[f"{name}.txt"] = time.monotonic() + settle  # the last write, plus the settle time
            sampler.expect(f"{name}.txt")  # only now: before the write it would count as gone

        t0 = time.monotonic()
        count = pairs or trickle
        if pairs:
            for i in range(pairs):
                drop(f"pair-{i:04d}")
        else:
            for i in range(trickle):
                drop(f"one-{i:03d}")
                deadline = time.monotonic() + settle + 30
                while f"one-{i:03d}.txt" not in sampler.gone_at and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(trickle_gap)
        dropped = time.monotonic()
        while len(os.listdir(done)) < count and runner.is_alive():
            time.sleep(0.05)
        finished = time.monotonic()
        service.stop.set()
        service.wake.set()
        runner.join(timeout=120)
        sampler.closing.set()
        sampler.join()
        latencies = [sampler.gone_at[n] - r for n, r in ready_at.items() if n in sampler.gone_at]
        first = min(ready_at, key=ready_at.get)  # type: ignore[arg-type]
        return {
            "pairs": pairs,
            "trickle": trickle if not pairs else 0,
            "mode": mode,
            "settle_seconds": settle,
            "poll_interval": poll,
            "filed": len(os.listdir(done)),
            "drop_seconds": dropped - t0,
            "backlog_seconds": finished - dropped,
            "jobs_per_second": count / (finished - dropped) if pairs else None,
            "latency_median": statistics.median(latencies) if latencies else None,
            "latency_p95": percentile(latencies, 0.95) if latencies else None,
            "latency_first": sampler.gone_at.get(first, float("nan")) - ready_at[first],
            "claims_seen": len(latencies),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def in_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"child run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 1000], help="backlog sizes to run")
    parser.add_argument(
        "--mode", choices=["inotify", "poll"], default="inotify", help="watch mode for backlogs"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="watch.settle_seconds")
    parser.add_argument("--poll", type=float, default=1.0, help="watch.poll_interval")
    parser.add_argument("--trickle", type=int, default=20, help="pairs dropped one at a time (0: skip)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 pairs, 5-pair trickle")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        pairs, mode, settle, poll, trickle, gap = args.child
        print(json.dumps(run_child(int(pairs), mode, float(settle), float(poll), int(trickle), float(gap))))
        return

    sizes = [50] if args.quick else args.pairs
    trickle = 5 if args.quick else args.trickle
    print(
        f"i2vd backlog benchmark: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; stub generator, no recipes, 2-frame 512p clips"
    )
    print(f"settle_seconds={args.settle} poll_interval={args.poll}; each run in a fresh process\n")
    header = (
        f"{'run':<26}{'jobs/s':>8}{'backlog s':>11}{'ready->claim median':>21}"
        f"{'p95':>10}{'first':>10}{'peak RSS':>11}"
    )
    print(header)
    print("-" * len(header))

    def show(label: str, r: dict) -> None:
        jps = f"{r['jobs_per_second']:.1f}" if r["jobs_per_second"] else "-"
        print(
            f"{label:<26}{jps:>8}{r['backlog_seconds']:>11.1f}{r['latency_median']:>19.3f} s"
            f"{r['latency_p95']:>9.3f}s{r['latency_first']:>9.3f}s{r['peak_rss_mib']:>7.0f} MiB"
            + ("" if r["filed"] == (r["pairs"] or r["trickle"]) else f"   (only {r['filed']} filed!)")
        )

    for n in sizes:
        r = in_child([str(n), args.mode, str(args.settle), str(args.poll), "0", "0"])
        show(f"backlog {n} ({args.mode})", r)
    if trickle:
        for mode in ("inotify", "poll"):
            r = in_child(["0", mode, str(args.settle), str(args.poll), str(trickle), "0.3"])
            show(f"trickle {trickle} ({mode})", r)
    print(
        "\nready->claim: from (last write + settle_seconds) to the files leaving the inbox, seen from"
        "\noutside every 5 ms. In a backlog it is mostly waiting behind earlier jobs; 'first' and the"
        "\ntrickle runs show the reaction time alone. peak RSS is the whole process (Python, numpy,"
        "\nPillow, the daemon) at its highest."
    )


if __name__ == "__main__":
    main()
