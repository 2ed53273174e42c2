"""What reading every output back costs: ``count_frames`` on each file of one job.

Every file ``encode_job`` makes is decoded once more before it is published (it must decode,
with the frames it should have; some ffmpeg builds exit 0 after writing an empty file). This
times that check alone, per output, for the pinned ffmpeg and for Debian's when it is installed,
and sets the sum beside the time of the job's whole encode.

    python benchmarks/bench_verify.py            # 9 repeats, 16 frames 704x512 at 8 fps
    python benchmarks/bench_verify.py --quick    # 3 repeats

Figures only: nothing here asserts a speed. The checks of one job run in parallel (one decoder
thread each), so on a machine with spare cores the job waits for less than the sum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from daemon.encode.builtin_recipes import BUILTIN_RECIPES
from daemon.encode.ffmpeg import FFmpeg, count_frames, select_ffmpeg
from daemon.encode.onepass import encode_job

WIDTH, HEIGHT, FRAMES, FPS = 704, 512, 16, 8
SYSTEM_FFMPEG = Path("/usr/bin/ffmpeg")


def frames() -> np.ndarray:
    # Smooth moving gradients: what a real clip looks like to the codec, not noise.
    y = np.linspace(40, 220, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(40, 220, WIDTH, dtype=np.float32)[None, :]
    clip = np.empty((FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(FRAMES):
        clip[i, :, :, 0] = np.broadcast_to((x + 6 * i) % 256, (HEIGHT, WIDTH))
        clip[i, :, :, 1] = np.broadcast_to(y, (HEIGHT, WIDTH))
        clip[i, :, :, 2] = np.broadcast_to((x + y) / 2, (HEIGHT, WIDTH))
    return clip


def bench(ffmpeg: FFmpeg, repeats: int) -> None:
    print(f"ffmpeg: {ffmpeg.describe()}")
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-verify-") as tmp:
        started = time.perf_counter()
        result = encode_job(frames(), FPS, Path(tmp), "bench", BUILTIN_RECIPES, ffmpeg=ffmpeg)
        encode_ms = (time.perf_counter() - started) * 1000
        files = [result.master, *(o.path for o in result.recipes.values() if o.path is not None)]
        total = 0.0
        for path in files:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                count, problem = count_frames(path, ffmpeg.path)
                times.append(time.perf_counter() - t)
            median = statistics.median(times) * 1000
            total += median
            print(f"  {path.name:20s} {count if problem is None else problem!s:>4} frames  {median:6.1f} ms")
        print(f"  sum of checks {total:.0f} ms; the whole encode_job (checks included) {encode_ms:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    print(f"{WIDTH}x{HEIGHT}, {FRAMES} frames at {FPS} fps, all built-in recipes; median of {repeats}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    bench(select_ffmpeg(None), repeats)
    if SYSTEM_FFMPEG.is_file():
        bench(select_ffmpeg(SYSTEM_FFMPEG), repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
