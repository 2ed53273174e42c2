"""When each waiting job should start and be ready, from how long recent jobs took.

Durations are kept per kind of job, ``(width, height, frames, steps, workers)``: a few recent
ones each, for a bounded number of kinds, in ``STATE/durations.json`` (so a restart keeps
them; read back as a stranger's file). A waiting job's own prompt file is not read before it
starts, so its estimate is the median of the last jobs of any kind; the running job's is that
of its own kind, or what its steps so far say once it made one.

``schedule`` then plays the queue forward on the workers: each waiting job starts when the
first worker frees up, generates for the estimate, and is ready an encode later. That is a
few operations per job listed (at most ``scanning.QUEUE_SHOWN``), whatever the backlog.
"""

from __future__ import annotations

import functools
import heapq
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.folders import fsops
from daemon.service.controls import read_trusted_json
from daemon.service.executor import WorkerState

HISTORY = "durations.json"
Kind = tuple[int, int, int, int, int]  # width, height, frames, steps, workers

_PER_KIND = 8
_KINDS = 64
_RECENT = 20
_MAX_SECONDS = 7 * 24 * 3600.0
_CAP = 256 * 1024
# The history is written at most this often (and at stop): a backlog files jobs every second.
_SAVE_EVERY = 30.0


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value <= _MAX_SECONDS else None


class Durations:
    """Recent generate and encode times; thread-safe (the filing thread adds, status reads)."""

    def __init__(self, state: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = state / HISTORY
        self._clock = clock
        self._saved_at = float("-inf")
        self._dirty = False
        self._lock = threading.Lock()
        self._kinds: dict[Kind, deque[float]] = {}
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._encode: deque[float] = deque(maxlen=_RECENT)

    def load(self) -> None:
        """What an earlier run measured (once the state folder is known to be the daemon's)."""
        obj = read_trusted_json(self.path, _CAP)
        if obj is None:
            return
        try:
            for entry in list(obj.get("kinds") or [])[-_KINDS:]:
                kind = tuple(int(x) for x in entry["kind"])
                values = [v for v in map(_seconds, entry["seconds"]) if v is not None]
                if len(kind) == 5 and all(0 < k < 1_000_000 for k in kind) and values:
                    self._kinds[kind] = deque(values[-_PER_KIND:], maxlen=_PER_KIND)  # type: ignore[index]
            for key, into in (("recent", self._recent), ("encode", self._encode)):
                into.extend(v for v in map(_seconds, list(obj.get(key) or [])[-_RECENT:]) if v is not None)
        except (KeyError, TypeError, ValueError) as e:
            logs.get().warning("ignoring recent job durations that cannot be read", reason=str(e))
            self._kinds.clear()

    def add(self, kind: Kind, generate: float, encode: float | None) -> None:
        with self._lock:
            times = self._kinds.pop(kind, None) or deque(maxlen=_PER_KIND)
            times.append(generate)
            self._kinds[kind] = times  # most recently used last: the oldest kind goes first
            while len(self._kinds) > _KINDS:
                del self._kinds[next(iter(self._kinds))]
            self._recent.append(generate)
            if encode is not None:
                self._encode.append(encode)
            self._dirty = True
            if self._clock() - self._saved_at < _SAVE_EVERY:
                return
        self.save()

    def save(self) -> None:
        """Write the history to the state folder, if it changed since the last write."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            self._saved_at = self._clock()
            data = {
                "kinds": [{"kind": list(k), "seconds": list(v)} for k, v in self._kinds.items()],
                "recent": list(self._recent),
                "encode": list(self._encode),
            }
        try:
            fsops.write_json_atomic(self.path, data, durable=False, private=True)
        except OSError as e:  # an estimate is not worth failing a job for
            logs.get().warning("cannot keep recent job durations", error=str(e))

    def generate(self, kind: Kind | None = None) -> float | None:
        """Median generate seconds of jobs of ``kind``; of recent jobs of any kind without one."""
        with self._lock:
            times = self._kinds.get(kind) if kind is not None else None
            if not times:
                times = self._recent
            return statistics.median(times) if times else None

    def encode(self) -> float | None:
        with self._lock:
            return statistics.median(self._encode) if self._encode else None


@functools.lru_cache(maxsize=4096)
def iso_at(epoch: int) -> str:
    """Local ISO 8601 time of a whole second since the epoch. Cached: as the queue drains, each
    waiting job's estimate stays near the same second, and formatting 400 times a status was
    most of what estimating cost."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def schedule(
    free_in: list[float], count: int, generate: float | None, encode: float | None, hold: float | None = 0.0
) -> list[tuple[float, float] | None]:
    """(start, ready) in seconds from now for the next ``count`` waiting jobs, in order.

    ``free_in``: when each worker is free (0: now); ``hold``: seconds until new jobs may start
    at all (None: not foreseeable, a pause).
    """
    if generate is None or hold is None or not free_in:
        return [None] * count
    heap = [max(t, hold) for t in free_in]
    heapq.heapify(heap)
    out: list[tuple[float, float] | None] = []
    for _ in range(count):
        start = heapq.heappop(heap)
        end = start + generate
        out.append((start, end + (encode or 0.0)))
        heapq.heappush(heap, end)
    return out


def plan(
    durations: Durations,
    in_flight: list[tuple[str, Kind]],
    workers: list[WorkerState],
    capacity: int,
    queue: list[str],
    *,
    now: float,
    wall: float,
    hold: float | None,
) -> tuple[dict[str, float], float, list[dict[str, Any]]]:
    """(generation seconds left of each job in flight, a typical encode's seconds, each listed
    waiting job's position and estimated start and ready time as ISO 8601 or None).

    A job in flight is judged by its steps so far once it made one (``WorkerState.eta``), else
    by recent jobs of its kind; the waiting ones by recent jobs of any kind. ``now`` is the
    loop's clock (the workers' start times), ``wall`` the epoch seconds the times count from,
    ``hold`` seconds until new jobs may start (None: not foreseeable).
    """
    busy_on = {w.job: w for w in workers if w.job is not None}
    left: dict[str, float] = {}
    for job, kind in in_flight:
        worker = busy_on.get(job)
        eta = worker.eta(now) if worker is not None else None
        typical = durations.generate(kind)
        if eta is None and typical is not None:
            started = worker.started if worker is not None and worker.started is not None else now
            eta = max(0.0, typical - (now - started))
        if eta is not None:
            left[job] = eta
    typical = durations.generate()
    busy = [left.get(job, typical) for job, _ in in_flight]
    if None in busy:
        hold = None  # a job in flight of unknown length: when a worker frees up is not known
    free_in = [t or 0.0 for t in busy] + [0.0] * max(0, capacity - len(busy))
    encode = durations.encode() or 0.0
    slots = schedule(free_in, len(queue), typical, encode, hold)
    waiting = [
        {
            "job": name,
            "position": i,
            "estimated_start": iso_at(int(wall + slot[0] + 0.5)) if slot else None,
            "estimated_finish": iso_at(int(wall + slot[1] + 0.5)) if slot else None,
        }
        for i, (name, slot) in enumerate(zip(queue, slots, strict=True), 1)
    ]
    return left, encode, waiting
