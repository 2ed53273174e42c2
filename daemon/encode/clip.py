"""The numbers of one clip, and what an output made from it must hold.

Apart from the recipes because every stage of encoding needs them (the graph fills placeholders
from a ``ClipInfo``, the read-back judges each output against a ``FrameCount``), while only the
config needs a recipe's validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class ClipInfo:
    """The trusted numbers of one clip, the only values placeholders may take."""

    frames: int
    fps: int
    width: int
    height: int

    def fade_frames(self) -> int:
        # About half a second, but at most a third of the clip so the middle stays visible.
        return max(1, min(round(self.fps * 0.5), (self.frames - 1) // 3))

    def placeholders(self) -> dict[str, str]:
        fps = Fraction(self.fps)
        fade = Fraction(self.fade_frames()) / fps
        # Ends the fade-out exactly on the last frame's timestamp, so the last frame is black.
        fade_out_start = max(Fraction(0), Fraction(self.frames - 1) / fps - fade)
        return {
            "duration": _decimal(Fraction(self.frames) / fps),
            "frames": str(self.frames),
            "fps": str(self.fps),
            "width": str(self.width),
            "height": str(self.height),
            "fade_duration": _decimal(fade),
            "fade_out_start": _decimal(fade_out_start),
        }


@dataclass(frozen=True)
class FrameCount:
    """How many frames an output must hold to be called ok: ``low`` to ``high`` (None: no limit)."""

    low: int
    high: int | None = None

    def admits(self, count: int) -> bool:
        return count >= self.low and (self.high is None or count <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"at least {self.low}"
        if self.low == self.high:
            return f"exactly {self.low}"
        return f"{self.low} to {self.high}"


def _decimal(value: Fraction) -> str:
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"
