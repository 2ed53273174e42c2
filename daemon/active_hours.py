"""``[queue] active_hours``: the daily window in which new jobs start.

A job started inside the window finishes whenever it finishes; outside it the loop claims
nothing and status says why. Windows may span midnight ("20:00-07:00"). The clock is
injected (local wall time), so tests move it rather than wait for the night.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

_FORM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DAY = 24 * 60


def parse_window(text: str) -> tuple[int, int] | None:
    """Minutes after midnight of (start, end), or None for "" (always open).

    Raises ValueError naming the expected form.
    """
    if not text.strip():
        return None
    m = _FORM.match(text)
    bad = ValueError(f'{text!r} is not a daily window "HH:MM-HH:MM" (for example "20:00-07:00"), or ""')
    if m is None:
        raise bad
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise bad
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % _DAY:
        raise ValueError(f'{text!r} is an empty window; use "" to take jobs at any hour')
    return start, end


@dataclass
class ActiveHours:
    """Whether new jobs may start now, and when the window opens next."""

    window: tuple[int, int] | None
    now: Callable[[], datetime] = lambda: datetime.now().astimezone()

    @classmethod
    def of(cls, text: str, now: Callable[[], datetime] | None = None) -> ActiveHours:
        return cls(parse_window(text), now) if now is not None else cls(parse_window(text))

    def open_now(self) -> bool:
        return self.opens_in() == 0.0

    def opens_in(self) -> float:
        """Seconds until the window opens (0: it is open now)."""
        if self.window is None:
            return 0.0
        t = self.now()
        minute = t.hour * 60 + t.minute + (t.second + t.microsecond / 1e6) / 60
        start, end = self.window
        inside = start <= minute < end if start < end else (minute >= start or minute < end % _DAY)
        if inside:
            return 0.0
        return ((start - minute) % _DAY) * 60.0

    def opens_at(self) -> datetime | None:
        """When the window opens next, or None while it is open."""
        if self.window is None or self.opens_in() == 0.0:
            return None
        t = self.now()
        start = t.replace(hour=self.window[0] // 60, minute=self.window[0] % 60, second=0, microsecond=0)
        return start if start > t else start + timedelta(days=1)

    def describe(self) -> str:
        if self.window is None:
            return ""
        start, end = self.window
        return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
