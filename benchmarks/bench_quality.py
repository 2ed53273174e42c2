"""What re-encoding from the master costs in picture quality, against encoding from the frames.

For every built-in recipe, SSIM (ffmpeg's ``ssim`` filter, the ``All`` figure averaged over all
frames) of its output against the generated frames themselves, made two ways:

- one pass: ``encode_job`` from the lossless frames (what the daemon does);
- re-encode: the master mp4 (``encode_job``'s own) put through one ffmpeg per recipe, with the
  recipe's filters, codec and options (the usual hand-made flow, as in ``bench_encode.py``).

The reference for each recipe is the generated frames put through the same geometric and
temporal filters (scale, pad, fps, fade, the first frame for ``poster``) into a lossless FFV1
file in RGB, so only the loss of the codec (and of 4:2:0 chroma, or of the GIF palette, whose
palette filters are left out of the reference) is measured. Both sides are compared in yuv444p,
frame by frame in order.

    python benchmarks/bench_quality.py            # 16 frames 704x512 at 8 fps
    python benchmarks/bench_quality.py --quick    # smoke run on a small clip
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.encode.builtin_recipes import BUILTIN_RECIPES
from daemon.encode.clip import ClipInfo
from daemon.encode.ffmpeg import ffmpeg_exe
from daemon.encode.onepass import encode_job
from daemon.encode.recipes import RecipeConfig

try:  # python -m benchmarks.bench_quality
    from benchmarks.bench_encode import (
        FULL,
        GLOBAL_ARGS,
        QUICK,
        STEM,
        content_variants,
        machine_lines,
        recipe_command,
        run_ffmpeg,
    )
except ImportError:  # python benchmarks/bench_quality.py
    from bench_encode import (  # type: ignore[no-redef]
        FULL,
        GLOBAL_ARGS,
        QUICK,
        STEM,
        content_variants,
        machine_lines,
        recipe_command,
        run_ffmpeg,
    )

#: Filters that are the lossy part of a recipe (the GIF palette), left out of its reference.
LOSSY_FILTERS = ("palettegen", "paletteuse")
#: Output options that change which frames there are, kept in the reference.
TEMPORAL_OPTIONS = ("r", "frames:v")

FRAMECRC = ("-map", "0:v:0", "-f", "framecrc", "-")

_ALL_RE = re.compile(r"SSIM Y:([0-9.]+) .* All:([0-9.]+) \(([0-9.]+|inf)\)")


def reference_command(
    width: int, height: int, fps: int, frames: int, dst: Path, recipe: RecipeConfig | None
) -> list[str]:
    """Raw frames -> ``recipe``'s geometric/temporal filters -> lossless FFV1 (RGB) in Matroska."""
    argv = [ffmpeg_exe(), *GLOBAL_ARGS, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    argv += ["-framerate", str(fps), "-i", "pipe:"]
    options: dict[str, str] = {"r": str(fps), "frames:v": str(frames)}
    if recipe is not None:
        kept = [text for text in recipe.filters if not any(name in text for name in LOSSY_FILTERS)]
        shape_only = recipe.model_copy(update={"filters": kept})
        clip = ClipInfo(frames=frames, fps=fps, width=width, height=height)
        chain = shape_only.render_chain(clip, "ref_")
        if chain is not None:
            argv += ["-vf", chain]
        wanted = shape_only.output_options()
        options = {key: wanted[key] for key in TEMPORAL_OPTIONS if key in wanted}
    for key, value in {**options, "c:v": "ffv1", "pix_fmt": "gbrp"}.items():
        argv += [f"-{key}", value]
    return [*argv, str(dst)]


def frame_count(path: Path) -> int:
    """Frames ffmpeg decodes from ``path`` (one framecrc line per frame)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), *FRAMECRC],
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(1 for line in proc.stdout.splitlines() if line and not line.startswith("#"))


@dataclass(frozen=True)
class Score:
    all: float
    y: float
    compared: int  # frame pairs the filter saw
    frames: int  # frames in the file under test
    ref_frames: int
    bytes: int

    def cell(self) -> str:
        mark = (
            "" if self.frames == self.ref_frames == self.compared else f" ({self.frames}/{self.ref_frames}fr)"
        )
        return f"{self.all:.4f}{mark}"


def ssim(dist: Path, ref: Path, work: Path) -> Score:
    """ffmpeg's SSIM of ``dist`` against ``ref``, frame n with frame n, both in yuv444p."""
    stats = work / "ssim.log"
    # Timestamps are replaced by the frame number so GIF's centisecond rounding or an mp4 edit list
    # cannot pair a frame with its neighbour; shortest=1 never repeats a last frame into the average.
    graph = (
        "[0:v]settb=1/1000,setpts=N,format=yuv444p[d];"
        "[1:v]settb=1/1000,setpts=N,format=yuv444p[r];"
        f"[d][r]ssim=stats_file={stats}:shortest=1"
    )
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info"]
    argv += ["-i", str(dist), "-i", str(ref), "-lavfi", graph, "-f", "null", "-"]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
    )
    match = _ALL_RE.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"ssim of {dist.name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    compared = sum(1 for line in stats.read_text().splitlines() if line.strip())
    return Score(
        all=float(match.group(2)),
        y=float(match.group(1)),
        compared=compared,
        frames=frame_count(dist),
        ref_frames=frame_count(ref),
        bytes=dist.stat().st_size,
    )


def measure(
    frames: np.ndarray, fps: int, recipes: dict[str, RecipeConfig], tmp: Path
) -> dict[str, tuple[Score, Score]]:
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=fps, width=width, height=height)
    one_dir, re_dir, ref_dir = tmp / "one-pass", tmp / "re-encode", tmp / "reference"
    for folder in (one_dir, re_dir, ref_dir):
        folder.mkdir()
    result = encode_job(frames, fps, one_dir, STEM, recipes)
    if result.failed:
        raise RuntimeError(f"encode_job failed recipes: {result.failed}")
    master = result.master
    scores: dict[str, tuple[Score, Score]] = {}

    master_ref = ref_dir / "master.mkv"
    run_ffmpeg(reference_command(width, height, fps, count, master_ref, None), stdin=frames)
    master_score = ssim(master, master_ref, tmp)
    scores["(master mp4)"] = (master_score, master_score)

    for name, recipe in recipes.items():
        ref = ref_dir / f"{name}.mkv"
        run_ffmpeg(reference_command(width, height, fps, count, ref, recipe), stdin=frames)
        one = result.recipes[name].path
        assert one is not None
        again = re_dir / f"{STEM}.{name}.{recipe.ext}"
        run_ffmpeg(recipe_command(master, again, recipe, clip))
        scores[name] = (ssim(one, ref, tmp), ssim(again, ref, tmp))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a small clip")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    fps = size["fps"]

    print("i2vd quality benchmark: SSIM of each recipe against the generated frames,")
    print("one pass from the frames (encode_job) vs re-encoded from the master mp4")
    for line in machine_lines():
        print(line)
    print(
        f"clip:    {size['frames']} frames, {size['width']}x{size['height']}, {fps} fps; SSIM = ffmpeg ssim"
        " 'All' (Y, U, V in yuv444p), averaged over all frames; 1 = identical"
        + ("  [--quick: smoke figures, not for the README]" if args.quick else "")
    )
    recipes = dict(BUILTIN_RECIPES)
    for content, frames in content_variants(size).items():
        with tempfile.TemporaryDirectory(prefix="i2vd-quality-") as tmp:
            scores = measure(frames, fps, recipes, Path(tmp))
        print()
        print(f"frames: {content}")
        header = (
            f"{'recipe':<13} | {'SSIM one-pass':>13} | {'SSIM re-encode':>14} | {'difference':>10}"
            f" | {'KiB one-pass':>12} | {'KiB re-encode':>13}"
        )
        print(header)
        print("-" * len(header))
        for name, (one, again) in scores.items():
            if name.startswith("("):
                print(
                    f"{name:<13} | {one.cell():>13} | {'-':>14} | {'-':>10}"
                    f" | {one.bytes / 1024:>12.1f} | {'-':>13}"
                )
                continue
            print(
                f"{name:<13} | {one.cell():>13} | {again.cell():>14} | {again.all - one.all:>+10.4f}"
                f" | {one.bytes / 1024:>12.1f} | {again.bytes / 1024:>13.1f}",
                flush=True,
            )
    print()
    print("(master mp4) is the master clip itself (CRF 18), the input of every re-encode.")
    print("A cell marked (N/Mfr) had N frames where the lossless reference has M.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
