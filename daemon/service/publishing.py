"""When the daemon's state is published (status.json, the listeners), and telling the listeners.

Apart from the loop because it is a policy of its own: a change people see (a job started, a
file arrived) is published within ``STATUS_EVERY`` seconds, changes in between together, so a
backlog moving at many jobs a second writes the status and renders the share page twice a
second, not several times per job; progress at most once a second; and at least every 30 s,
so that ``i2vd status`` can tell the daemon lives. A status.json that cannot be written (a full disk,
which share users can cause) is logged once per reason and tried again every ``RETRY_EVERY``
seconds; the listeners still hear.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.listeners.events import Listener
from daemon.service.executor import ProgressBoard
from daemon.service.status_file import STATUS, write_status

STATUS_EVERY = 0.5
PROGRESS_EVERY = 1.0
ALIVE_EVERY = 30.0
RETRY_EVERY = 5.0


class Publisher:
    """Publishes what ``build(state, now)`` returns, when due; listeners hear from one thread at a time."""

    def __init__(
        self,
        state_dir: Path,
        listeners: list[Listener],
        board: ProgressBoard,
        build: Callable[[str | None, float], dict[str, Any]],
        *,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.state_dir = state_dir
        self.listeners = listeners
        self.board = board
        self._build = build
        self.clock = clock
        self._wake = wake
        self._at = float("-inf")
        self._wanted = False
        self._board_seen = -1
        self._lock = threading.RLock()  # listeners are never called from two threads at once
        self.log = logs.get()
        self.trouble = logs.Recurring("status.json", path=str(state_dir / STATUS))

    def want(self) -> None:
        """Something people see changed: publish soon. From any thread; only sets flags."""
        self._wanted = True
        self._wake()

    def due(self, poll_interval: float) -> float:
        """Publish what is due now; return how long the loop may wait before the next one is."""
        since = self.clock() - self._at
        progress = self.board.version != self._board_seen
        if (
            (self._wanted and since >= STATUS_EVERY)
            or (progress and since >= PROGRESS_EVERY)
            or since > ALIVE_EVERY
            or (self.trouble.reason is not None and since >= RETRY_EVERY)
        ):
            self.publish()
            since = 0.0
        if self._wanted:
            return min(poll_interval, max(0.0, STATUS_EVERY - since))
        return poll_interval

    def publish(self, state: str | None = None) -> None:
        """Write status.json and give it to every listener, now."""
        now = self.clock()
        with self._lock:
            self._at = now
            self._wanted = False
            self._board_seen = self.board.version
            status = self._build(state, now)
            try:
                write_status(self.state_dir, status)
            except OSError as e:
                self.trouble.failed(e)
            else:
                self.trouble.ok()
            self.tell(lambda listener: listener.on_status(status))

    def tell(self, call: Callable[[Listener], None]) -> None:
        """Call every listener; one that fails is logged and the rest still hear."""
        with self._lock:
            for listener in self.listeners:
                try:
                    call(listener)
                except Exception:
                    self.log.exception("listener failed", listener=type(listener).__name__)
