"""Does the GPU ever wait for the CPU? Overlap of encoding with generation.

A stub generator that only sleeps S seconds per job stands in for GPU time; the default
recipes are encoded for real by ffmpeg. Figure: wall time for N jobs / (N x S), counted
from the first job's claim to the last job's filing. The hand-made sequential flow
(generate, then encode, then the next) sits at 1 + encode/generate; the goal is < 1.05.

    python benchmarks/bench_overlap.py            # 20 jobs, 2 s each
    python benchmarks/bench_overlap.py --quick    # 5 jobs, 0.5 s each
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from daemon.config import load_settings
from daemon.encode.ffmpeg import ffmpeg_version
from daemon.encode.onepass import encode_job
from daemon.engine.interface import GenerationRequest
from daemon.engine.stub import StubGenerator
from daemon.listeners.events import JobFinished
from daemon.service.loop import Service


class Clock:
    """Listener noting when the first job started and the last one was filed."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.done = 0

    def on_status(self, status: dict[str, Any]) -> None:
        if self.first is None and status.get("current"):
            self.first = time.monotonic()

    def on_job_finished(self, event: JobFinished) -> None:
        self.last = time.monotonic()
        self.done += 1

    def close(self) -> None:
        pass


def picture(path: Path) -> None:
    img = Image.new("RGB", (704, 512))
    draw = ImageDraw.Draw(img)
    for x in range(704):
        draw.line([(x, 0), (x, 511)], fill=(x * 255 // 703, 80, 255 - x * 255 // 703))
    draw.ellipse([200, 120, 500, 420], fill=(240, 220, 60))
    img.save(path)


def encode_seconds(settings: Any, repeat: int) -> float:
    """Median time to encode one job's frames with the default recipes, alone."""
    table = settings.recipe_table()
    recipes = {n: table[n] for n in settings.output.default_recipes}
    frames = (
        StubGenerator()
        .generate(
            GenerationRequest(
                image=Image.new("RGB", (704, 512), (90, 120, 200)),
                width=704,
                height=512,
                prompt="",
                negative_prompt="",
                num_frames=settings.generation.num_frames,
                fps=settings.generation.fps,
                steps=1,
                guidance_scale=1.0,
                seed=1,
            )
        )
        .frames
    )
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            out = Path(tmp) / str(i)
            out.mkdir()
            t0 = time.monotonic()
            encode_job(frames, settings.generation.fps, out, "bench", recipes)
            times.append(time.monotonic() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0, help="stand-in GPU time per job")
    ap.add_argument("--quick", action="store_true", help="5 jobs of 0.5 s (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.seconds = 5, 0.5

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config.toml").write_text(
            f'[model]\nid = "stub:{args.seconds}"\n'
            "[watch]\nsettle_seconds = 0\npoll_interval = 0.05\n"
            "[generation]\nnum_frames = 16\nfps = 8\nsteps = 10\n"
        )
        settings = load_settings(root / "config.toml")
        inbox = settings.paths.inbox
        inbox.mkdir()
        picture(inbox / "job00.png")
        for i in range(args.jobs):
            if i:
                (inbox / f"job{i:02d}.png").write_bytes((inbox / "job00.png").read_bytes())
            (inbox / f"job{i:02d}.txt").write_text("the sun rises")
        clock = Clock()
        Service(settings, StubGenerator(args.seconds), watch=False, listeners=[clock]).run_once()
        assert clock.first is not None and clock.done == args.jobs
        wall = clock.last - clock.first
        enc = encode_seconds(settings, repeat=3)

    ideal = args.jobs * args.seconds
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, {ffmpeg_version()}")
    print(
        f"jobs: {args.jobs}, stand-in GPU {args.seconds:g} s/job, recipes: {settings.output.default_recipes}"
    )
    print(f"encode alone (median of 3): {enc:.3f} s/job")
    print(f"wall {wall:.2f} s for {ideal:.2f} s of generation")
    print(f"overlap ratio wall/(N x S):   {wall / ideal:.3f}   (goal < 1.05)")
    print(f"sequential flow 1 + enc/gen:  {1 + enc / args.seconds:.3f}")


if __name__ == "__main__":
    main()
