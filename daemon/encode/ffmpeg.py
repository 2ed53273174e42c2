"""Which ffmpeg runs, and reading back what it wrote.

The ffmpeg is a deliberate choice (``select_ffmpeg``): the binary pinned with imageio-ffmpeg, or
the one ``[output] ffmpeg`` names; never whatever is on PATH, so every machine behaves the same.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import EncodeError

ADDRESS_RE = re.compile(r" @ 0x[0-9a-fA-F]+")
# ffmpeg's generic epilogue after the real error; keeping it would push the cause out of view.
NOISE_RE = re.compile(
    r"(^Exiting with exit code|^Conversion failed!|Terminating thread with return code"
    r"|Task finished with error|^Error opening output files?\b|^Error initializing complex filters"
    r"|^Invalid argument$)"
)

# One decoder thread: for a short clip the threads cost more to start than they save (704x512,
# 16 frames: 37 ms instead of 49 ms; 1080x1920: 69 instead of 129), and outputs are checked in parallel.
_VERIFY_ARGS = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-xerror", "-threads", "1")


class FFmpegUnavailable(EncodeError, RuntimeError):
    """The ffmpeg to use is missing, does not run, or cannot encode H.264.

    Also a RuntimeError, which is what imageio-ffmpeg raises for the same problem, so callers
    that check the set-up catch either.
    """


# --- choosing ffmpeg ------------------------------------------------------------------------

#: The config key that names another ffmpeg; messages name it so the operator knows what to change.
FFMPEG_KEY = "output.ffmpeg"


@dataclass(frozen=True)
class FFmpeg:
    """The ffmpeg binary in use, and why it was chosen."""

    path: str
    #: What ``ffmpeg -version`` calls itself, e.g. ``5.1.9-0+deb12u1``.
    version: str
    #: "imageio-ffmpeg 0.8.1" for the pinned binary, or the config key that named it.
    chosen_by: str

    def describe(self) -> str:
        return f"{self.path} (ffmpeg {self.version}, from {self.chosen_by})"


def _pinned_path() -> tuple[str, str]:
    """The ffmpeg binary inside the installed imageio-ffmpeg wheel, and that wheel's version.

    Not ``imageio_ffmpeg.get_ffmpeg_exe()``: that honours $IMAGEIO_FFMPEG_EXE and falls back to
    whatever ffmpeg is on PATH, the very machine-to-machine difference the pin exists to remove.
    """
    try:
        from importlib import metadata, resources

        version = metadata.version("imageio-ffmpeg")
        folder = resources.files("imageio_ffmpeg.binaries")
        found = sorted(
            str(entry) for entry in folder.iterdir() if entry.name.startswith("ffmpeg") and entry.is_file()
        )
    except (ImportError, metadata.PackageNotFoundError, OSError):
        raise FFmpegUnavailable(
            "imageio-ffmpeg is not installed, so i2vd has no ffmpeg of its own: reinstall i2vd "
            f"(pip install i2v-daemon), or set {FFMPEG_KEY} to an ffmpeg built with libx264"
        ) from None
    if not found:
        raise FFmpegUnavailable(
            f"imageio-ffmpeg {version} has no ffmpeg binary for this platform: set {FFMPEG_KEY} "
            'to an ffmpeg built with libx264 (e.g. "/usr/bin/ffmpeg")'
        )
    return found[0], version


@functools.cache
def select_ffmpeg(configured: str | os.PathLike[str] | None = None) -> FFmpeg:
    """The ffmpeg to run: the one imageio-ffmpeg pins, or ``configured`` ([output] ffmpeg).

    Never whatever happens to be on PATH: Debian's ffmpeg 5.1 writes an empty file for a split
    output that got no frames and exits 0, Fedora's has no libx264, and a job must come out the
    same on every machine. Checked once per binary: it runs, and it can encode H.264 (the master).
    """
    if configured is None:
        path, wheel = _pinned_path()
        chosen_by = f"imageio-ffmpeg {wheel}"
        fix = f'set {FFMPEG_KEY} to an ffmpeg built with libx264 (e.g. "/usr/bin/ffmpeg")'
    else:
        path, chosen_by = str(configured), FFMPEG_KEY
        fix = f"set {FFMPEG_KEY} to an ffmpeg built with libx264, or remove it to use the one i2vd ships"
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise FFmpegUnavailable(f"{FFMPEG_KEY} = {path!r} is not an executable file: {fix}")
    try:
        proc = subprocess.run(
            [path, "-hide_banner", "-nostdin", "-version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise FFmpegUnavailable(f"ffmpeg {path} ({chosen_by}) does not run: {exc}; {fix}") from None
    match = re.match(r"ffmpeg version (\S+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise FFmpegUnavailable(f"{path} ({chosen_by}) is not a working ffmpeg; {fix}")
    if not _has_libx264(path):
        raise FFmpegUnavailable(
            f"ffmpeg {path} ({chosen_by}) cannot encode H.264 (it has no libx264 encoder); {fix}"
        )
    return FFmpeg(path=path, version=match.group(1), chosen_by=chosen_by)


def ffmpeg_exe() -> str:
    """Path of the default ffmpeg (the pinned one), for benchmarks and diagnostics."""
    return select_ffmpeg(None).path


def ffmpeg_version() -> str:
    """Version of the default ffmpeg (the pinned one), e.g. for benchmark headers."""
    return select_ffmpeg(None).version


def _has_libx264(exe: str) -> bool:
    try:
        proc = subprocess.run(
            [exe, "-hide_banner", "-nostdin", "-encoders"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and re.search(r"^\s*V\S*\s+libx264\s", proc.stdout, re.MULTILINE) is not None


def count_frames(path: Path | str, exe: str, timeout: float = 60.0) -> tuple[int | None, str | None]:
    """Decode the first video stream of ``path`` with ``exe``; return (frames, None) or (None, why not).

    The same ffmpeg that wrote the file reads it back (imageio-ffmpeg ships no ffprobe): every
    frame is decoded into the null muxer, ``-xerror`` turns any decode error into a failure, and
    ``-progress`` reports the count as ``frame=N`` in a format that has not changed in years.
    """
    argv = [exe, *_VERIFY_ARGS, "-i", str(path), "-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"reading it back took more than {timeout:.0f} seconds"
    except OSError as exc:
        return None, f"could not start ffmpeg to read it back: {exc}"
    if proc.returncode != 0:
        if "matches no streams" in proc.stderr:
            return None, "it holds no video (ffmpeg wrote an empty file)"
        name = os.path.basename(str(path))
        lines = [ADDRESS_RE.sub("", line).replace(str(path), name) for line in proc.stderr.splitlines()]
        lines = [line for line in lines if line.strip() and not NOISE_RE.search(line)]
        detail = "; ".join(lines[-2:]) or f"exit status {proc.returncode}"
        return None, f"it does not decode: {detail}"
    counts = re.findall(r"^frame=\s*(\d+)\s*$", proc.stdout, re.MULTILINE)
    if not counts:
        return None, "ffmpeg reported no frame count when reading it back"
    return int(counts[-1]), None
