"""Which ready job goes next: ``[queue] order`` and ``priority``.

The scanner hands over every ready group, oldest first, once per scan; the loop takes one
at a time (the only chooser, also with Ray workers, so turns hold across every GPU).

- ``fair``: each top-level folder of the inbox (and the inbox itself, ``""``) is one line;
  the line served longest ago goes next (a line never served before goes first), and within
  a line the oldest ready job. A folder with 500 jobs therefore delays another folder's one
  job by at most one job per GPU.
- ``arrival``: strictly oldest ready first.
- ``priority`` folders go before all others, the first listed first, each in its order.

Memory and time stay bounded with thousands of ready jobs: a scan's list is split into
lines in one pass, and taking a job costs a look at each line's head (a few folders), not
at every job.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from daemon.folders.group import Group

# How many lines remember when they were served; past this, lines with no job ready forget.
_REMEMBERED = 4096


def line_of(rel_dir: Path) -> str:
    """The folder a job takes turns as: the top-level subfolder it came from, "" for the inbox."""
    parts = rel_dir.parts
    return parts[0] if parts and parts[0] != "." else ""


class Turns:
    """The ready jobs in the order they will be taken; ``take`` hands out the next one."""

    def __init__(self, order: str = "fair", priority: Iterable[str] = ()) -> None:
        self.order = order
        self._rank = {name: i for i, name in enumerate(priority)}
        self._lines: dict[str, deque[Group]] = {}
        self._count = 0
        self._per_folder: dict[str, int] = {}  # top-level folder -> jobs ready, whatever the order
        self._served: dict[str, int] = {}  # line -> the turn it was last served on
        self._turn = 0

    def __len__(self) -> int:
        return self._count

    def load(self, ready: list[Group]) -> None:
        """A scan's ready groups, oldest first, replace what was ready before."""
        lines: dict[str, deque[Group]] = {}
        per_folder: dict[str, int] = {}
        for g in ready:
            top = line_of(g.rel_dir)
            per_folder[top] = per_folder.get(top, 0) + 1
            key = self._key(g)
            line = lines.get(key)
            if line is None:
                line = lines[key] = deque()
            line.append(g)
        self._lines = lines
        self._per_folder = per_folder
        self._count = len(ready)
        if len(self._served) > _REMEMBERED:
            self._served = {k: v for k, v in self._served.items() if k in lines}

    def clear(self) -> None:
        self._lines = {}
        self._per_folder = {}
        self._count = 0

    def waiting_in(self, folder: str) -> bool:
        """Whether a job of the top-level ``folder`` is ready and not taken yet."""
        return self._per_folder.get(folder, 0) > 0

    def _taken(self, g: Group) -> None:
        top = line_of(g.rel_dir)
        left = self._per_folder.get(top, 0) - 1
        if left > 0:
            self._per_folder[top] = left
        else:
            self._per_folder.pop(top, None)

    def withdraw(self, match: Callable[[Group], bool]) -> list[Group]:
        """Take every ready job ``match`` picks out of the queue (a cancel); one pass, rare."""
        out: list[Group] = []
        for key in list(self._lines):
            line = self._lines[key]
            if not any(match(g) for g in line):
                continue
            keep = deque(g for g in line if not match(g))
            out += [g for g in line if match(g)]
            if keep:
                self._lines[key] = keep
            else:
                del self._lines[key]
        self._count -= len(out)
        for g in out:
            self._taken(g)
        return out

    def take(self) -> Group | None:
        """The next job, taken off its line; None when nothing is ready."""
        if not self._lines:
            return None
        key = min(self._lines, key=lambda k: self._priority(k, self._served))
        line = self._lines[key]
        g = line.popleft()
        if not line:
            del self._lines[key]
        self._count -= 1
        self._taken(g)
        self._turn += 1
        self._served[key] = self._turn
        return g

    def upcoming(self, limit: int) -> list[Group]:
        """The first ``limit`` jobs in the order ``take`` would hand them out (nothing is taken)."""
        if len(self._lines) == 1:  # one folder (or arrival order): its own order
            return list(itertools.islice(next(iter(self._lines.values())), limit))
        served = dict(self._served)
        turn = self._turn
        heap = [(self._priority(k, served), k) for k in self._lines]
        heapq.heapify(heap)
        pos = dict.fromkeys(self._lines, 0)
        out: list[Group] = []
        while heap and len(out) < limit:
            _, key = heapq.heappop(heap)
            line = self._lines[key]
            out.append(line[pos[key]])
            pos[key] += 1
            if pos[key] < len(line):
                turn += 1
                served[key] = turn
                heapq.heappush(heap, (self._priority(key, served), key))
        return out

    def _key(self, g: Group) -> str:
        line = line_of(g.rel_dir)
        if self.order == "fair" or line in self._rank:
            return line
        return ""  # arrival: one line (the priority folders keep their own)

    def _priority(self, key: str, served: dict[str, int]) -> tuple[int, int, float, str]:
        head = self._lines[key][0]
        rank = self._rank.get(key, len(self._rank))
        if self.order == "arrival" and rank == len(self._rank):
            return (rank, 0, head.since, key)
        return (rank, served.get(key, -1), head.since, key)
