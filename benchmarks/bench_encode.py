"""One-pass encoding (``encode_job``) against the usual hand-made flow, timed in the same run.

One pass: the raw frames are piped once into one ffmpeg whose filter graph splits into the
master clip and every recipe (what the daemon does).

Hand-made: the master mp4 is written from the frames with the same master options, then one
ffmpeg per recipe reads that mp4 and applies the recipe's filters, codec and options, built from
the same ``RecipeConfig`` as the daemon's graph. The recipes run one after another, as a script
would run them.

Two recipe sets (the default list and all six built-ins) and two kinds of frames: the stub
generator's output on a drawn landscape image (what a real clip looks like to the encoder) and
random noise (what the random-weight ``tiny`` model makes, the worst case for H.264).

    python benchmarks/bench_encode.py            # 5 repeats, 16 frames 704x512 at 8 fps
    python benchmarks/bench_encode.py --quick    # smoke run: 1 repeat of a small clip

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from daemon.config_sections import OutputConfig
from daemon.encode.builtin_recipes import BUILTIN_RECIPES
from daemon.encode.clip import ClipInfo
from daemon.encode.ffmpeg import ffmpeg_exe, select_ffmpeg
from daemon.encode.onepass import encode_job
from daemon.encode.onepass_graph import MASTER_OPTIONS
from daemon.encode.recipes import RecipeConfig
from daemon.engine.interface import GenerationRequest
from daemon.engine.stub import StubGenerator

#: The same global flags as the daemon's own ffmpeg runs.
GLOBAL_ARGS = (
    "-nostdin",
    "-hide_banner",
    "-nostats",
    "-loglevel",
    "error",
    "-abort_on",
    "empty_output",
    "-y",
)

FULL = {"width": 704, "height": 512, "frames": 16, "fps": 8}
QUICK = {"width": 352, "height": 256, "frames": 8, "fps": 8}
STEM = "bench"


# --- frames ---------------------------------------------------------------------------------


def landscape_image(width: int, height: int, seed: int = 1) -> Image.Image:
    """A real-looking picture: sky and ground gradients, sun, hills, a house, grass, film grain."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    sky = (1 - y) * np.array([40, 90, 190], np.float32) + y * np.array([200, 220, 245], np.float32)
    sky = sky + 25 * x * np.array([1.0, 0.6, -0.4], np.float32)  # warmer towards the sun
    base = np.broadcast_to(sky, (height, width, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    w, h = width, height
    draw.ellipse((0.72 * w, 0.08 * h, 0.86 * w, 0.08 * h + 0.14 * w), fill=(255, 236, 170))
    draw.polygon(
        [
            (0, 0.62 * h),
            (0.18 * w, 0.38 * h),
            (0.36 * w, 0.58 * h),
            (0.55 * w, 0.33 * h),
            (0.8 * w, 0.6 * h),
            (w, 0.45 * h),
            (w, h),
            (0, h),
        ],
        fill=(70, 105, 80),
    )
    # Ground: a darker green gradient with grass strokes.
    for row in range(int(0.66 * h), h):
        t = (row - 0.66 * h) / (0.34 * h)
        draw.line([(0, row), (w, row)], fill=(int(60 + 40 * t), int(120 + 30 * t), int(50 + 10 * t)))
    for _ in range(1500):
        gx, gy = rng.uniform(0, w), rng.uniform(0.66 * h, h)
        shade = int(rng.integers(60, 170))
        draw.line([(gx, gy), (gx + rng.uniform(-3, 3), gy - rng.uniform(3, 10))], fill=(30, shade, 40))
    # A house with a roof, a door and windows.
    hx, hy, hw, hh = 0.18 * w, 0.55 * h, 0.22 * w, 0.2 * h
    draw.rectangle((hx, hy, hx + hw, hy + hh), fill=(190, 160, 120), outline=(60, 40, 30), width=2)
    draw.polygon([(hx - 8, hy), (hx + hw / 2, hy - 0.12 * h), (hx + hw + 8, hy)], fill=(150, 50, 40))
    draw.rectangle((hx + 0.4 * hw, hy + 0.45 * hh, hx + 0.6 * hw, hy + hh), fill=(90, 60, 40))
    for wx in (0.1, 0.72):
        draw.rectangle(
            (hx + wx * hw, hy + 0.2 * hh, hx + (wx + 0.18) * hw, hy + 0.45 * hh), fill=(170, 210, 240)
        )
    # A tree and a few clouds.
    draw.rectangle((0.66 * w, 0.52 * h, 0.68 * w, 0.72 * h), fill=(90, 60, 35))
    draw.ellipse((0.6 * w, 0.36 * h, 0.74 * w, 0.58 * h), fill=(40, 110, 50))
    for cx, cy in ((0.12, 0.12), (0.4, 0.18), (0.55, 0.08)):
        for dx, dy, r in ((0, 0, 0.05), (0.04, -0.02, 0.045), (0.08, 0, 0.04)):
            px, py, rr = (cx + dx) * w, (cy + dy) * h, r * w
            draw.ellipse((px - rr, py - 0.6 * rr, px + rr, py + 0.6 * rr), fill=(245, 245, 250))
    image = image.filter(ImageFilter.GaussianBlur(0.8))  # lens softness: no perfectly hard edges
    grain = rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)  # sensor noise
    return Image.fromarray(
        (np.asarray(image, np.float32) + grain).clip(0, 255).round().astype(np.uint8), "RGB"
    )


def stub_frames(width: int, height: int, frames: int, fps: int) -> np.ndarray:
    """What the stub generator makes of the landscape: the picture under a moving brightness ramp."""
    request = GenerationRequest(
        image=landscape_image(width, height),
        width=width,
        height=height,
        prompt="benchmark",
        negative_prompt="",
        num_frames=frames,
        fps=fps,
        steps=1,
        guidance_scale=9.0,
        seed=1234,
    )
    return StubGenerator().generate(request).frames


def noise_frames(width: int, height: int, frames: int, seed: int = 7) -> np.ndarray:
    """Independent uniform noise in every pixel of every frame, like the tiny model's clips."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def content_variants(size: Mapping[str, int]) -> dict[str, np.ndarray]:
    width, height, frames, fps = size["width"], size["height"], size["frames"], size["fps"]
    return {
        "stub": stub_frames(width, height, frames, fps),
        "noise": noise_frames(width, height, frames),
    }


def recipe_sets() -> dict[str, dict[str, RecipeConfig]]:
    default = OutputConfig().default_recipes
    return {
        "default": {name: BUILTIN_RECIPES[name] for name in default},
        "all": dict(BUILTIN_RECIPES),
    }


# --- the hand-made flow ---------------------------------------------------------------------


def master_command(width: int, height: int, fps: int, frames: int, dst: Path) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin and writing the master with encode.py's options."""
    options = {**MASTER_OPTIONS, "r": str(fps), "frames:v": str(frames)}
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    argv += ["-framerate", str(fps), "-i", "pipe:"]
    for key, value in options.items():
        argv += [f"-{key}", value]
    return [*argv, str(dst)]


def recipe_command(
    src: Path, dst: Path, recipe: RecipeConfig, clip: ClipInfo, label_prefix: str = "r0_"
) -> list[str]:
    """ffmpeg reading ``src`` (the master mp4) and writing one recipe, from the same RecipeConfig."""
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, "-i", str(src)]
    chain = recipe.render_chain(clip, label_prefix)
    if chain is not None:
        argv += ["-vf", chain]
    for key, value in recipe.output_options().items():
        argv += [f"-{key}", value]
    return [*argv, str(dst)]


def run_ffmpeg(argv: list[str], stdin: np.ndarray | None = None) -> None:
    data = None if stdin is None else memoryview(np.ascontiguousarray(stdin)).cast("B")
    proc = subprocess.run(argv, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(argv)}\n{tail}")


@dataclass
class HandMade:
    master: Path
    recipes: dict[str, Path]
    master_seconds: float
    recipe_seconds: dict[str, float]


def hand_made(
    frames: np.ndarray, fps: int, out_dir: Path, stem: str, recipes: Mapping[str, RecipeConfig]
) -> HandMade:
    """Master mp4 from the frames, then one ffmpeg per recipe reading the master, one after another."""
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=fps, width=width, height=height)
    master = out_dir / f"{stem}.mp4"
    started = time.perf_counter()
    run_ffmpeg(master_command(width, height, fps, count, master), stdin=frames)
    master_seconds = time.perf_counter() - started
    paths: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name, recipe in recipes.items():
        dst = out_dir / f"{stem}.{name}.{recipe.ext}"
        started = time.perf_counter()
        run_ffmpeg(recipe_command(master, dst, recipe, clip))
        seconds[name] = time.perf_counter() - started
        paths[name] = dst
    return HandMade(master, paths, master_seconds, seconds)


def one_pass(
    frames: np.ndarray, fps: int, out_dir: Path, stem: str, recipes: Mapping[str, RecipeConfig]
) -> None:
    result = encode_job(frames, fps, out_dir, stem, recipes)
    if result.failed or not result.single_pass:
        errors = "; ".join(f"{n}: {result.recipes[n].error}" for n in result.failed)
        raise RuntimeError(f"encode_job did not make every output in one pass: {errors or 'fell back'}")


# --- reporting ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"machine: {os.cpu_count()} CPUs ({usable} usable), {cpu_model()}"
        f" (platform.processor()={platform.processor()!r}), {platform.platform()}",
        f"python:  {platform.python_version()}, numpy {np.__version__}",
        f"ffmpeg:  {select_ffmpeg(None).describe()}",
    ]


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds on the clock
    cpu: float  # CPU seconds of this process and its ffmpeg children: robust to other load


def timed(action: Callable[[Path], object]) -> Sample:
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-") as tmp:
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        action(Path(tmp))
        wall = time.perf_counter() - started
        return Sample(wall, _cpu_seconds() - cpu_before)


def _cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Measurement:
    one: list[Sample]
    hand: list[Sample]
    master: list[float]  # wall seconds of the hand-made flow's first step

    def wall(self, which: str) -> tuple[float, float, float]:
        values = [sample.wall for sample in getattr(self, which)]
        return statistics.median(values), min(values), max(values)

    def cpu(self, which: str) -> float:
        return statistics.median(sample.cpu for sample in getattr(self, which))

    def paired_ratio(self) -> float:
        """Median of hand-made/one-pass over runs made back to back (less sensitive to load drifting)."""
        return statistics.median(h.wall / o.wall for h, o in zip(self.hand, self.one, strict=True))


def measure(
    frames: np.ndarray, fps: int, recipes: Mapping[str, RecipeConfig], repeats: int, warmup: bool
) -> Measurement:
    one: list[Sample] = []
    hand: list[Sample] = []
    master: list[float] = []

    def run_one(tmp: Path) -> None:
        one_pass(frames, fps, tmp, STEM, recipes)

    def run_hand(tmp: Path) -> None:
        master.append(hand_made(frames, fps, tmp, STEM, recipes).master_seconds)

    if warmup:
        timed(run_one)
        timed(run_hand)
        master.clear()
    for i in range(repeats):
        # Alternating which goes first, so neither always runs on a cooler or warmer machine.
        if i % 2 == 0:
            one.append(timed(run_one))
            hand.append(timed(run_hand))
        else:
            hand.append(timed(run_hand))
            one.append(timed(run_one))
    return Measurement(one, hand, master)


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def _spread(median: float, low: float, high: float) -> str:
    return f"{median:.3f} ({low:.2f}-{high:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, no warm-up, small clip")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    size = QUICK if args.quick else FULL
    warmup = not args.quick
    fps = size["fps"]

    print("i2vd encode benchmark: one pass from the frames (encode_job) vs hand-made (master mp4, then")
    print("one ffmpeg per recipe reading the master, run one after another)")
    for line in machine_lines():
        print(line)
    print(
        f"clip:    {size['frames']} frames, {size['width']}x{size['height']}, {fps} fps;"
        f" {repeats} timed repeat(s) each{' after 1 warm-up' if warmup else ''}, alternating order"
        + ("  [--quick: smoke figures, not for the README]" if args.quick else "")
    )
    print(f"load average at start (1, 5, 15 min): {load_average()}")
    print()
    variants = content_variants(size)
    header = (
        f"{'frames':<6} | {'recipes':<46} | {'one-pass s':>20} | {'hand-made s':>20} | {'hand/one':>8}"
        f" | {'paired':>6} | {'master s':>8} | {'CPU one':>7} | {'CPU hand':>8} | {'CPU h/o':>7}"
    )
    print(header)
    print("-" * len(header))
    for content, frames in variants.items():
        for set_name, recipes in recipe_sets().items():
            m = measure(frames, fps, recipes, repeats, warmup)
            one, hand = m.wall("one"), m.wall("hand")
            cpu_one, cpu_hand = m.cpu("one"), m.cpu("hand")
            label = f"{set_name}: {', '.join(recipes)}"
            print(
                f"{content:<6} | {label:<46} | {_spread(*one):>20} | {_spread(*hand):>20}"
                f" | {hand[0] / one[0]:>7.2f}x | {m.paired_ratio():>5.2f}x"
                f" | {statistics.median(m.master):>8.3f} | {cpu_one:>7.2f} | {cpu_hand:>8.2f}"
                f" | {cpu_hand / cpu_one:>6.2f}x",
                flush=True,
            )
    print()
    print(f"load average at end (1, 5, 15 min): {load_average()}")
    notes = (
        "one-pass s / hand-made s: median wall seconds (min-max). hand/one: ratio of the medians, > 1 means",
        "the one pass is faster; paired: median of the per-repeat ratios of back-to-back runs.",
        "master s: the hand-made flow's first step alone (wall). CPU: median CPU seconds (user+sys) of",
        "Python and its ffmpeg processes, which other load on the machine barely changes. One-pass times",
        "include encode_job's fsync and rename of every output, as the daemon runs it.",
    )
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
