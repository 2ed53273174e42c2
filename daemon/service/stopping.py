"""The two stops: warm (finish the jobs in flight, claim no more) and cold (interrupt them).

A first SIGTERM or Ctrl-C asks for a warm stop, a second for a cold one; a warm stop whose
``watch.stop_grace`` runs out turns cold. Signal handlers only call ``request``, which sets
flags; the scanner thread says at once in the log what will happen (``explain``), and the
loop interrupts the jobs in flight when it is time (``enforce``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from daemon.listeners import systemd as notify


class Stopping:
    def __init__(self, clock: Callable[[], float], log: Any) -> None:
        self.clock = clock
        self.log = log
        self.stop = threading.Event()  # warm stop: finish the jobs in flight, claim no more
        self.abort = threading.Event()  # cold stop: interrupt them, their files go back to the inbox
        self.asked_at: float | None = None
        self._told = 0  # requests already explained in the log (1 warm, 2 cold)
        self._cancelled = False

    def request(self) -> None:
        """First call: warm stop. Second: cold stop. Only flags: it runs in a signal handler."""
        if self.stop.is_set():
            self.abort.set()
        else:
            self.asked_at = self.clock()
        self.stop.set()

    def enforce(self, in_flight: bool, grace: float, cancel: Callable[[], None]) -> None:
        """Interrupt the jobs in flight (``cancel``) on a cold stop, or once the grace is over."""
        if self._cancelled or not in_flight:
            return
        if self.asked_at is not None and not self.abort.is_set() and self.clock() - self.asked_at > grace:
            self.log.warning("stop grace is over; interrupting the jobs in flight", grace_seconds=grace)
            self.abort.set()
        if self.abort.is_set():
            self._cancelled = True
            cancel()

    def explain(self, in_flight: Sequence[str], grace: float) -> None:
        """Say at once what a stop request will do, once per request, and tell systemd."""
        wanted = 2 if self.abort.is_set() else 1 if self.stop.is_set() else 0
        if wanted <= self._told:
            return
        self._told = wanted
        jobs = ", ".join(in_flight) or None
        if wanted == 1:
            if jobs:
                self.log.info(
                    f"stop requested: finishing {jobs} (at most {grace:g} s more), then stopping; "
                    "press Ctrl-C again (or send SIGTERM again) to interrupt and put the files back "
                    "in the inbox"
                )
            else:
                self.log.info("stop requested: no job is running; stopping")
            notify.stopping("finishing the current job (warm stop)" if jobs else "stopping")
        else:
            self.log.info(
                f"interrupting {jobs} now; the files go back to the inbox" if jobs else "stopping now"
            )
            notify.stopping("interrupting the current job (cold stop)")
