"""The scanner thread: looks at the inbox all the time, also while jobs generate.

Every poll interval (sooner when the watcher or a signal sets ``wake``) it scans once and
publishes what is ready to the loop, which alone claims. What waits (still being copied, or
missing its partner) is shown to people at once, and its settle clock runs meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.folders.scan import Group, InboxScanner
from daemon.service.turns import Turns, line_of

# Ready groups listed by name in the status; a backlog of thousands is counted, not listed.
QUEUE_SHOWN = 200


def label(group: Group) -> str:
    """``REL/NAME`` as the status lists it; without pathlib, as it is built for every listed group
    at every status."""
    rel = str(group.rel_dir)
    return group.name if rel == "." else f"{rel}/{group.name}"


class InboxMonitor:
    """Owns the scanner and the ready list; the loop takes groups with ``take``."""

    def __init__(
        self,
        scanner: InboxScanner,
        *,
        poll_interval: float,
        wake: threading.Event,
        on_ready: Callable[[], None],
        on_change: Callable[[], None],
        each_round: Callable[[], None] = lambda: None,
        turns: Turns | None = None,
    ) -> None:
        self.scanner = scanner
        self.poll_interval = poll_interval
        self.wake = wake
        self._on_ready = on_ready  # tells the loop there is work (only sets a flag)
        self._on_change = on_change  # publishes the status: what waits changed
        self._each_round = each_round
        self._ready = turns if turns is not None else Turns()  # the ready groups, in taking order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown: tuple[Any, ...] | None = None
        # Scans started, and (number, ready, waiting) of the last one finished: run --once ends
        # only on a scan begun after its last claim that saw nothing left.
        self.started = 0
        self.last: tuple[int, int, int] = (0, 0, 0)
        self.cancel_files: list[tuple[str, str]] = []
        self._arriving_in: set[str] = set()  # top-level folders with files not ready yet
        self.log = logs.get()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="i2vd-scanner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def replace(self, scanner: InboxScanner, poll_interval: float, turns: Turns | None = None) -> None:
        """A reloaded config: a new scanner (and order) from the next scan on."""
        with self._lock:
            self.scanner = scanner
            self.poll_interval = poll_interval
            if turns is not None:
                self._ready = turns
            self._ready.clear()
        self.wake.set()

    def take(self) -> Group | None:
        with self._lock:
            return self._ready.take()

    def withdraw(self, match: Callable[[Group], bool]) -> list[Group]:
        """Take the ready groups ``match`` picks out of the queue (they are being cancelled)."""
        with self._lock:
            return self._ready.withdraw(match)

    def waiting_in(self, folder: str) -> bool:
        """Whether the top-level ``folder`` has a job ready, or files that are not ready yet."""
        with self._lock:
            return self._ready.waiting_in(folder) or folder in self._arriving_in

    def queued(self) -> tuple[list[str], int]:
        """(names of the first ready groups, in the order they will be taken; how many are ready)."""
        with self._lock:
            names = [label(g) for g in self._ready.upcoming(QUEUE_SHOWN)]
            return names, len(self._ready)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.clear()
            self._each_round()
            try:
                due = self.scan()
            except Exception:
                # Never blind for good: log, and look again next time.
                self.log.exception("scanning the inbox failed")
                due = None
            poll = self.poll_interval
            # Wake when the next waiting pair is due to settle, not a whole poll later.
            self.wake.wait(poll if due is None else max(0.0, min(poll, due)))

    def scan(self) -> float | None:
        """One look at the inbox; returns when the next waiting group is due (None: nothing waits)."""
        with self._lock:
            scanner = self.scanner
        self.started += 1
        seq = self.started
        ready = scanner.scan()
        with self._lock:
            if scanner is self.scanner:
                # Replacing the list (not a walk per claim) keeps a backlog of thousands at one
                # directory walk per poll interval, whatever the claim rate.
                self._ready.load(ready)
        self.last = (seq, len(ready), scanner.waiting)
        # (folder, NAME) of each NAME.cancel file in the inbox; replaced whole, read by the loop.
        self.cancel_files = scanner.cancel_files()
        self._arriving_in = {line_of(Path(rel)) for rel in scanner.waiting_folders()}
        if ready:
            self._on_ready()
        shown = (
            [label(g) for g in ready[:QUEUE_SHOWN]],
            scanner.pending,
            scanner.missing,
        )
        if shown != self._shown:
            self._shown = shown
            self._on_change()
        return scanner.next_ready_in
