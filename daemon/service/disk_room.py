"""Room on the disks the daemon writes to: below ``[limits] min_free_mb`` it takes no new job.

Share users can fill the share's disk themselves. The daemon then takes no new job (they wait in
the inbox, none fails for it), says why in status.json and on the share page, and goes on by
itself once there is room. ``os.statvfs`` is cheap, yet it is asked at most every
``CHECK_EVERY`` seconds, whatever the loop's pace.

A job whose files could not be written all the same (the disk filled while it ran, or a quota,
which statvfs does not show) goes back into the inbox (``service.filing``), and ``no_room``
holds new jobs until the disk has gained ``min_free_mb`` (at least 1 MB) since, or a back-off
has passed: ``HOLD_FIRST`` seconds, doubling up to ``HOLD_MAX`` while it keeps happening, so a
job too big for the disk is not made again and again.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from daemon import logs
from daemon.folders import fsops

CHECK_EVERY = 3.0
HOLD_FIRST = 60.0
HOLD_MAX = 3600.0
_MB = 1024 * 1024
# How ffmpeg and the C library say it, as they appear in an encoder's error text.
NO_ROOM_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class NoRoom(Exception):
    """A job's files could not be written for want of room (``str``: what was said)."""


def room_problem(error: BaseException | None = None, texts: Iterable[str] = ()) -> str | None:
    """What says a disk or quota is full in ``error`` (its causes too) or in ``texts``; None if nothing."""
    if error is not None:
        if isinstance(error, NoRoom):
            return str(error)
        if fsops.no_room(error):
            seen: BaseException | None = error
            while seen is not None and not (isinstance(seen, OSError) and seen.strerror):
                seen = seen.__cause__ or seen.__context__
            return seen.strerror if isinstance(seen, OSError) and seen.strerror else NO_ROOM_WORDS[0]
        texts = [str(error), *texts]
    for text in texts:
        for words in NO_ROOM_WORDS:
            if words in text:
                return words
    return None


def free_mb(path: Path) -> int | None:
    """MB an unprivileged process may still write on ``path``'s filesystem; None if it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize // _MB


class DiskRoom:
    """Whether a new job may start, as far as disk space goes; ``reason()`` says why not."""

    def __init__(
        self, paths: Sequence[Path], min_free_mb: Callable[[], int], *, clock: Callable[[], float]
    ) -> None:
        self.paths = list(paths)
        self.min_free_mb = min_free_mb  # read at each check: a reload may change it
        self.clock = clock
        self.free: dict[str, int] = {}  # path -> MB free, one path per filesystem
        self.last: str | None = None  # the reason of the last check (any thread may read it)
        self._checked_at = -math.inf
        self._hold_until: float | None = None
        self._hold_free: dict[str, int] = {}
        self._hold_error = ""
        self._hold_seconds = HOLD_FIRST
        self._logged: tuple[str, ...] | None = None
        self._lock = threading.Lock()  # the loop looks, the filing thread reports a job that did not fit
        self.log = logs.get()

    def reason(self) -> str | None:
        """Why no new job may start now, in words for people; None when there is room."""
        with self._lock:
            now = self.clock()
            if now - self._checked_at >= CHECK_EVERY:
                self._check(now)
            return self.last

    def no_room(self, problem: str) -> None:
        """A job's files could not be written for want of room: hold new jobs (see the module)."""
        with self._lock:
            now = self.clock()
            self._measure()
            self._hold_until = now + self._hold_seconds
            self._hold_free = dict(self.free)
            self._hold_error = problem
            self._hold_seconds = min(self._hold_seconds * 2, HOLD_MAX)
            self._check(now)

    def written(self) -> None:
        """A job's files were written: the next hold starts from ``HOLD_FIRST`` again."""
        with self._lock:
            self._hold_seconds = HOLD_FIRST

    def _measure(self) -> None:
        free: dict[str, int] = {}
        devices: set[int] = set()
        for path in self.paths:
            try:
                device = os.stat(path).st_dev
            except OSError:
                continue  # not there (yet): nothing of ours to write on it
            mb = free_mb(path)
            if mb is not None and device not in devices:
                devices.add(device)
                free[str(path)] = mb
        self.free = free

    def _check(self, now: float) -> None:
        self._checked_at = now
        self._measure()
        need = self.min_free_mb()
        reason: str | None = None
        key: tuple[str, ...] = ()
        short = sorted((mb, path) for path, mb in self.free.items() if mb < need)
        if short:
            mb, path = short[0]
            reason = f"disk nearly full: {mb} MB free on {path}, need {need} MB; jobs wait"
            key = ("low", path)
        elif self._hold_until is not None:
            gained = max(need, 1)
            if now >= self._hold_until or any(
                self.free.get(path, -gained) >= mb + gained for path, mb in self._hold_free.items()
            ):
                self._hold_until = None
            else:
                left = math.ceil(self._hold_until - now)
                reason = (
                    f"disk full: a job's files could not be written ({self._hold_error}), so it went back "
                    f"to the inbox; jobs wait until {gained} MB more are free, or {left} s"
                )
                key = ("hold",)
        if key != self._logged:
            if reason is not None:
                self.log.warning("taking no new jobs: " + reason, free_mb=self.free)
            elif self._logged:
                self.log.info("room on disk again; taking new jobs", free_mb=self.free)
            self._logged = key
        self.last = reason
