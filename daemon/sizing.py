"""A clip's size: the resolution a user names ("512p"), and an image fitted to it.

The shorter side is the resolution (512p -> 512), the longer side follows the image's aspect ratio,
both rounded to the model's multiple; aspect ratios beyond ``MAX_ASPECT`` (2.5:1) are capped there,
and ``fit_to`` centre-crops the image to the clip's aspect ratio before resizing, so nothing is ever
stretched. On the ground floor: the job layer sizes a clip before generation, the engine again on
its out-of-memory ladder, and the settings check the resolutions an operator lists.
"""

from __future__ import annotations

import math
import re

from PIL import Image

# Wider than this (long side : short side) and the clip is cropped to it (panoramas, banners).
MAX_ASPECT = 2.5

# The resolutions a setting may name: 16p is below any real model (the tiny test builds use 32p),
# above 4096p no model fits a GPU.
MIN_SHORT_SIDE = 16
MAX_SHORT_SIDE = 4096

_RESOLUTION_RE = re.compile(r"([1-9][0-9]{0,4})p")


def resolution_to_short_side(resolution: str) -> int:
    """``"512p"`` -> ``512``: the clip's shorter side in pixels; the one parser of a resolution.

    Raises ``ValueError`` naming the expected form for anything else, or a size outside
    ``MIN_SHORT_SIDE`` to ``MAX_SHORT_SIDE``.
    """
    match = _RESOLUTION_RE.fullmatch(resolution.strip().lower()) if isinstance(resolution, str) else None
    side = int(match.group(1)) if match else 0
    if not MIN_SHORT_SIDE <= side <= MAX_SHORT_SIDE:
        raise ValueError(
            f'{resolution!r}: write a resolution like "512p" ({MIN_SHORT_SIDE}p to {MAX_SHORT_SIDE}p)'
        )
    return side


def clip_size(width: int, height: int, *, short_side: int, multiple: int) -> tuple[int, int]:
    """The clip's (width, height) for an image of ``width`` x ``height``.

    The shorter side is ``short_side`` and the longer side follows the image's aspect ratio, capped
    at ``MAX_ASPECT``; both are rounded to the nearest multiple of ``multiple`` (at least
    ``multiple``). A capped aspect ratio is rounded down, so it never exceeds ``MAX_ASPECT``.
    """
    if width < 1 or height < 1 or short_side < 1 or multiple < 1:
        raise ValueError(f"clip_size needs positive sizes, got {width}x{height}, {short_side}, {multiple}")
    aspect = max(width, height) / min(width, height)
    short = _round_to(short_side, multiple)
    if aspect > MAX_ASPECT:
        long = max(short, math.floor(short * MAX_ASPECT / multiple) * multiple)
    else:
        long = max(short, _round_to(short * aspect, multiple))
    return (long, short) if width > height else (short, long)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def fit_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` centre-cropped to the aspect ratio of ``width`` x ``height``, then resized to exactly that.

    Nothing is stretched: the crop keeps the centre, and only the excess of the longer side goes.
    """
    if width < 1 or height < 1:
        raise ValueError(f"fit_to needs a positive size, got {width}x{height}")
    w, h = image.size
    target = width / height
    if w / h > target:  # too wide: trim left and right
        cw, ch = h * target, float(h)
    else:  # too tall (or exact): trim top and bottom
        cw, ch = float(w), w / target
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)
