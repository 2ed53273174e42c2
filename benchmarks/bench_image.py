"""What loading one image costs in memory: peak RSS growth of ``load_image``, per kind of file.

A small file can hold a big image: a 16-bit grayscale PNG of one smooth gradient compresses to
tens of kilobytes whatever its size, and up to ``limits.max_image_pixels`` (40 million by
default) it is a valid image every job must load. This writes such files (and an 8-bit RGB PNG
of the same size, the floor: its decoded pixels plus the RGB copy), then loads each in a fresh
process and prints how much its peak resident memory grew, and how much of that numpy/Python
allocated (tracemalloc sees those, not Pillow's own buffers).

    python benchmarks/bench_image.py              # 36 million pixels (6000 x 6000)
    python benchmarks/bench_image.py --side 2000  # quicker

Figures only: nothing here asserts a size.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image


def write_files(folder: Path, side: int) -> dict[str, Path]:
    ramp = np.linspace(0, 65535, side, dtype=np.float64).astype(np.uint16)
    gray16 = np.broadcast_to(ramp[None, :], (side, side))
    files = {
        "16-bit gray PNG": folder / "gray16.png",
        "8-bit RGB PNG": folder / "rgb8.png",
        "32-bit float TIFF": folder / "float.tif",
    }
    Image.fromarray(np.ascontiguousarray(gray16)).save(files["16-bit gray PNG"])
    rgb = np.zeros((side, side, 3), dtype=np.uint8)
    rgb[..., 0] = (ramp >> 8).astype(np.uint8)[None, :]
    Image.fromarray(rgb).save(files["8-bit RGB PNG"])
    del rgb
    f32 = np.broadcast_to(np.linspace(0, 1, side, dtype=np.float32)[None, :], (side, side))
    Image.fromarray(np.ascontiguousarray(f32), "F").save(files["32-bit float TIFF"])
    return files


def measure(path: Path) -> dict[str, float]:
    """Runs in the child: load ``path`` once, report the growth of peak RSS and traced peak (MiB)."""
    from daemon.job.image import load_image

    kwargs: dict[str, object] = {"max_pixels": 10**9, "max_bytes": 10**10}
    if "formats" in inspect.signature(load_image).parameters:
        kwargs["formats"] = ["PNG", "TIFF"]
    before = _peak_rss_kib(reset=True)
    tracemalloc.start()
    im = load_image(path, **kwargs)  # type: ignore[arg-type]
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = _peak_rss_kib()
    assert im.mode == "RGB"
    return {"rss_mib": (after - before) / 1024, "traced_mib": traced / 2**20}


def _peak_rss_kib(reset: bool = False) -> int:
    """This process's peak resident memory (VmHWM). ``ru_maxrss`` would not do: on Linux it keeps
    the parent's peak across fork and exec, and the parent held the pixels it wrote."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=6000, help="width and height in pixels")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    pixels = args.side * args.side
    rgb_mib = pixels * 3 / 2**20
    print(f"{args.side} x {args.side} = {pixels / 1e6:.0f} million pixels; RGB of that = {rgb_mib:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="i2vd-bench-image-") as tmp:
        for label, path in write_files(Path(tmp), args.side).items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=True
            )
            got = json.loads(out.stdout)
            size = path.stat().st_size
            per_pixel = got["rss_mib"] * 2**20 / pixels
            print(
                f"{label:18} file {size / 1024:9,.0f} KiB   peak RSS +{got['rss_mib']:7,.0f} MiB"
                f" ({per_pixel:5.1f} B/pixel)   numpy/Python peak {got['traced_mib']:7,.0f} MiB"
            )


if __name__ == "__main__":
    main()
