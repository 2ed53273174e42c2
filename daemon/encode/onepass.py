"""Turn generated frames into the master clip and the recipe outputs with ffmpeg.

The raw RGB frames are piped once into one ffmpeg process whose filter graph splits them into
the master and every recipe; nothing is re-encoded from the master and no frame files touch the
disk. Every file is written under a temporary dot-name in the job's folder, read back (it must
decode, with the frames it should have) and renamed into place only then, so nothing ever appears
half-written or empty. When the combined run fails, the master and then each failed recipe are
retried alone, so one broken recipe costs only its own file.

The graph is built in ``daemon.encode.onepass_graph`` and run and checked in ``daemon.encode.ffmpeg_run``;
which ffmpeg runs, and the read-back check, are in ``daemon.encode.ffmpeg``. This module is the
job's encode: its inputs checked, the retries, and the result.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from daemon.encode.clip import ClipInfo
from daemon.encode.ffmpeg import FFmpeg, select_ffmpeg
from daemon.encode.ffmpeg_run import run_targets
from daemon.encode.onepass_graph import MASTER_KEY, job_targets
from daemon.encode.recipes import RecipeConfig
from daemon.errors import EncodeError
from daemon.folders.fsops import fsync_dir

#: Per ffmpeg run; generous because a 1024p clip with many recipes on a busy CPU is slow.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RecipeOutcome:
    """What became of one recipe: its file, or ffmpeg's reason why not."""

    name: str
    ok: bool
    path: Path | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": str(self.path) if self.path else None, "error": self.error}

    def moved_to(self, folder: Path | None) -> RecipeOutcome:
        """The same outcome with its file in ``folder`` (None: the bare file name, to send it)."""
        if self.path is None or not self.ok:
            return replace(self, path=None)
        return replace(self, path=folder / self.path.name if folder is not None else Path(self.path.name))

    @property
    def file(self) -> str | None:
        """The file's name (what ``JOB.json`` records), None when the recipe failed."""
        return self.path.name if self.ok and self.path is not None else None


@dataclass(frozen=True)
class EncodeResult:
    master: Path
    recipes: dict[str, RecipeOutcome]
    seconds: float
    #: False when the combined run failed and outputs were made one by one.
    single_pass: bool
    #: argv of the combined run, for the job's log.
    command: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [name for name, outcome in self.recipes.items() if not outcome.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "master": str(self.master),
            "recipes": {name: outcome.to_dict() for name, outcome in self.recipes.items()},
            "seconds": round(self.seconds, 3),
            "single_pass": self.single_pass,
        }


def _check_frames(frames: np.ndarray, fps: int) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a (F, H, W, 3) array, got shape {getattr(frames, 'shape', None)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    count, height, width, _ = frames.shape
    if count < 1 or height < 2 or width < 2:
        raise ValueError(f"need at least one frame of 2x2 pixels, got shape {frames.shape}")
    if isinstance(fps, bool) or not isinstance(fps, int | np.integer) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    # H.264 in 4:2:0 needs even sizes; dropping the last row/column keeps every pixel where it
    # was (no resampling, no border), and every recipe then sees the same picture as the master.
    return frames[:, : height - height % 2, : width - width % 2]


def _check_stem(stem: str) -> None:
    if not stem or stem in {".", ".."} or "/" in stem or "\0" in stem or (os.sep != "/" and os.sep in stem):
        raise ValueError(f"stem {stem!r} must be a plain file name")


def encode_job(
    frames: np.ndarray,
    fps: int,
    out_dir: Path,
    stem: str,
    recipes: Mapping[str, RecipeConfig],
    *,
    master_options: Mapping[str, str | int] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    ffmpeg: FFmpeg | None = None,
) -> EncodeResult:
    """Write ``out_dir/stem.mp4`` and one file per recipe (``RecipeConfig.file_name``) from ``frames``.

    ``frames`` is (F, H, W, 3) uint8 RGB. Odd sizes lose their last row/column. ``ffmpeg`` is
    the binary to run (``select_ffmpeg``; None: the pinned one). Raises EncodeError only when
    the master clip cannot be made; a failing recipe is reported in the result and costs only
    its own file.
    """
    exe = (ffmpeg or select_ffmpeg(None)).path
    started = time.monotonic()
    frames = _check_frames(frames, fps)
    fps = int(fps)
    _check_stem(stem)
    out_dir = Path(os.path.abspath(out_dir))
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=fps, width=width, height=height)
    token = secrets.token_hex(4)
    extra = {k: str(v) for k, v in (master_options or {}).items()}
    targets = job_targets(out_dir, stem, token, clip, recipes, extra)
    by_key = {target.key: target for target in targets}

    results, combined = run_targets(frames, fps, targets, exe, timeout)
    single_pass = all(error is None for error in results.values())
    if not single_pass and len(targets) > 1:
        # We cannot tell from one ffmpeg error which output broke it, and an output that came out
        # broken from a run that exited 0 may have been hurt by another: redo each failed one alone.
        redo = [target for target in targets if results[target.key] is not None]
        if redo[0].key == MASTER_KEY:
            results.update(run_targets(frames, fps, [redo.pop(0)], exe, timeout)[0])
        if results[MASTER_KEY] is None:
            for target in redo:
                results.update(run_targets(frames, fps, [target], exe, timeout)[0])
    fsync_dir(out_dir)

    if results[MASTER_KEY] is not None:
        raise EncodeError(_master_error_message(results[MASTER_KEY]))

    outcomes = {
        target.key: RecipeOutcome(
            name=target.key,
            ok=results.get(target.key) is None,
            path=target.final if results.get(target.key) is None else None,
            error=results.get(target.key),
        )
        for target in targets[1:]
    }
    return EncodeResult(
        master=by_key[MASTER_KEY].final,
        recipes=outcomes,
        seconds=time.monotonic() - started,
        single_pass=single_pass,
        command=combined.argv,
    )


def _master_error_message(detail: str | None) -> str:
    if detail and "No space left on device" in detail:
        hint = (
            "The server's disk is full: the operator needs to free space, "
            "then move your files back into inbox/ to try again."
        )
    else:
        hint = (
            "This is a problem on the server, not with your files: ask the operator to run `i2vd check`, "
            "then move your files back into inbox/ to try again."
        )
    return f"The video file could not be written.\n{hint}\n\nffmpeg said:\n{detail}"
