"""What an idle scanner costs with a huge inbox: 100,000 files that never become jobs.

Two inboxes, each scanned every poll interval (1 s) by the real ``InboxScanner`` in a fresh
process, for the code in this tree ("after") and, in the same run, for the scanner of an
earlier commit ("before", exported with ``git archive``):

- ``junk``: 100,000 empty files of names the shipped ``[watch] ignore`` list skips
  (``.DS_Store``-style dot-files, ``~$*``, ``*.tmp``);
- ``waiting``: 100,000 empty images with no prompt file, all waiting for one
  (``pair_timeout`` longer than the run).

Figures per inbox and version:

- first scan: CPU seconds of the scan that first sees the inbox;
- idle: once the files have settled (3 s), median CPU milliseconds per scan while nothing
  changes, and the share of a core it takes at one scan a second (process CPU time / wall
  time over the idle scans);
- RSS: after imports (before any scan) and peak (``ru_maxrss``), in MB.

    python benchmarks/bench_inbox.py                      # 100,000 files, 35 idle scans
    python benchmarks/bench_inbox.py --files 20000 --scans 5
    python benchmarks/bench_inbox.py --before main        # compare with another commit

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The last commit whose scanner re-listed and looked at every file each scan.
BEFORE = "d467d60"


def make_inbox(path: Path, kind: str, files: int) -> None:
    path.mkdir(parents=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(files):
            if kind == "junk":
                name = (f".DS_Store{i}", f"~$report{i}.docx", f"download{i}.tmp")[i % 3]
            else:
                name = f"photo{i:06d}.png"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    past = time.time_ns() - 60 * 10**9  # as if dropped a minute ago
    os.utime(path, ns=(past, past))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(inbox: str, scans: int, poll: float) -> dict[str, object]:
    """Runs in the measured process, with the version under test first on sys.path."""
    from daemon.config_sections import DEFAULT_IGNORE
    from daemon.folders.scan import InboxScanner

    scanner = InboxScanner(
        Path(inbox), ignore=DEFAULT_IGNORE, settle_seconds=3.0, pair_timeout=3600.0, clock=time.monotonic
    )
    base_rss = rss_mb()
    cpu = time.process_time()
    scanner.scan()
    first = time.process_time() - cpu
    # Until the files have settled (settle_seconds of observation), both versions look at each
    # of them every scan; idle is what comes after.
    started = time.monotonic()
    while time.monotonic() - started < scanner.settle_seconds + poll:
        time.sleep(poll)
        scanner.scan()
    per_scan = []
    time.sleep(poll)
    wall0, cpu0 = time.monotonic(), time.process_time()
    for _ in range(scans):
        before = time.process_time()
        ready = scanner.scan()
        per_scan.append(time.process_time() - before)
        time.sleep(poll)
    idle_cpu, idle_wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "first_scan_s": round(first, 3),
        "idle_ms_per_scan": round(statistics.median(per_scan) * 1000, 3),
        "idle_core_pct": round(100 * idle_cpu / idle_wall, 2),
        "rss_after_imports_mb": round(base_rss, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "waiting": scanner.waiting,
        "ready": len(ready),
    }


def export(ref: str, into: Path) -> Path:
    """The ``daemon`` package as it was at ``ref``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "daemon"], check=True, capture_output=True
    ).stdout
    tar = into / "before.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into / "before", filter="data")
    return into / "before"


def measure(tree: Path, inbox: Path, scans: int, poll: float) -> dict[str, object]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r});"
        "from benchmarks.bench_inbox import child;"
        f"print(json.dumps(child({str(inbox)!r}, {scans}, {poll})))"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"the measured process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000, help="files in each inbox")
    # 35 at one a second: the idle scans include the listing of every folder made every 30 s.
    parser.add_argument("--scans", type=int, default=35, help="idle scans measured")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between scans (watch.poll_interval)")
    parser.add_argument("--before", default=BEFORE, help="commit to compare with ('' to skip)")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}")
    with tempfile.TemporaryDirectory(prefix="bench-inbox-") as tmp:
        base = Path(tmp)
        versions = {"after": ROOT}
        if args.before:
            versions = {"before": export(args.before, base), **versions}
        for kind in ("junk", "waiting"):
            inbox = base / kind
            make_inbox(inbox, kind, args.files)
            for version, tree in versions.items():
                r = measure(tree, inbox, args.scans, args.poll)
                print(
                    f"{kind:8} {version:6}  first scan {r['first_scan_s']:6.3f} s   "
                    f"idle {r['idle_ms_per_scan']:8.3f} ms/scan = {r['idle_core_pct']:5.2f} % of a core   "
                    f"RSS {r['rss_after_imports_mb']:6.1f} MB after imports, "
                    f"{r['peak_rss_mb']:6.1f} MB peak   "
                    f"(waiting {r['waiting']}, ready {r['ready']})",
                    flush=True,
                )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
