"""Checking an operator's recipe before any job uses it: run it on a short synthetic clip.

``validate_recipe`` builds the recipe's output as a job's encode would (``daemon.encode.onepass_graph``),
runs ffmpeg on a few frames of moving gradients and checks the file the same way
(``daemon.encode.ffmpeg_run``): a recipe this ffmpeg refuses stops the daemon's start and is
named by ``i2vd check``, instead of failing every job.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from daemon.encode.clip import ClipInfo
from daemon.encode.ffmpeg import FFmpeg, select_ffmpeg
from daemon.encode.ffmpeg_run import run_targets
from daemon.encode.onepass_graph import recipe_target
from daemon.encode.recipes import RecipeConfig, check_recipe_name
from daemon.errors import EncodeError


def _synthetic_clip(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    # Moving gradients rather than flat grey, so palette and scaling filters see real content.
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        shift = 255.0 * i / max(frames, 1)
        clip[i, :, :, 0] = ((x + shift) % 256).astype(np.uint8)
        clip[i, :, :, 1] = np.broadcast_to(y, (height, width)).astype(np.uint8)
        clip[i, :, :, 2] = ((x + y + 2 * shift) % 256).astype(np.uint8)
    return clip


def validate_recipe(
    name: str, recipe: RecipeConfig, *, timeout: float = 60.0, ffmpeg: FFmpeg | None = None
) -> str | None:
    """Run ``recipe`` on a short synthetic clip; return ffmpeg's error message, or None if it works.

    The output is checked as a job's would be (it decodes, with the frames it should have).
    """
    try:
        check_recipe_name(name)
    except ValueError as exc:
        return str(exc)
    frames = _synthetic_clip()
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=8, width=width, height=height)
    try:
        exe = (ffmpeg or select_ffmpeg(None)).path
        with tempfile.TemporaryDirectory(prefix="i2vd-check-") as tmp:
            target = recipe_target(Path(tmp), "check", secrets.token_hex(4), 0, name, recipe, clip)
            results, _ = run_targets(frames, clip.fps, [target], exe, timeout)
    except (OSError, ValueError, EncodeError) as exc:
        return str(exc)
    return results[name]


def recipe_errors(recipes: Mapping[str, RecipeConfig], ffmpeg: FFmpeg) -> dict[str, str | None]:
    """Every recipe tried with this ffmpeg, by name in order: its error, or None where it works."""
    return {name: validate_recipe(name, recipes[name], ffmpeg=ffmpeg) for name in sorted(recipes)}
