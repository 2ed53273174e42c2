"""``outputs/index.html``: a status page for the people on the share, opened straight from it.

``SharePage`` is a ``daemon.listeners.events.Listener``. It keeps the last ``keep`` finished and
failed jobs in memory (``page_entries``) and rewrites the page (``page_render``) atomically: on
a finished job (with the next status when the page was just written), on a change of state,
current job or what waits, and otherwise at most every ``min_interval`` seconds, so per-step
progress ticks do not turn into a file write each. A page that cannot be written (the share's
disk full) is logged once per reason and written again at the next status; it is padded so that
it can still say "disk full" when the disk is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.folders import fsops
from daemon.listeners.events import JobFinished
from daemon.listeners.page_entries import Entry, entry_from_event, load_recent
from daemon.listeners.page_render import card, render

PAGE = "index.html"


class SharePage:
    """Keeps ``outputs/index.html`` current; see the module docstring for when it writes."""

    def __init__(
        self,
        outputs: Path,
        failed: Path,
        *,
        keep: int = 50,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 2.0,
    ) -> None:
        self.outputs = Path(outputs)
        self.failed = Path(failed)
        self.path = self.outputs / PAGE
        self.clock = clock
        self.min_interval = min_interval
        self.log = logs.get()
        self.renders = 0  # pages written; for tests and the curious
        self._entries: deque[Entry] = deque(maxlen=max(1, keep))
        # Each entry's card, rendered once (id -> the entry and its card; holding the entry keeps
        # its id from being reused). A backlog finishing jobs every second re-renders the page
        # each time: escaping every card anew was most of the coordinator's CPU per job.
        self._cards: dict[int, tuple[Entry, str]] = {}
        self._status: dict[str, Any] = {"state": "unknown"}
        self._key: tuple[object, ...] | None = None
        self._rendered_at = float("-inf")
        self._pending = False
        self._trouble = logs.Recurring("the share page", path=str(self.path))
        # The loop calls from one thread, but close() may come from a signal path.
        self._lock = threading.Lock()
        try:
            self._entries.extend(load_recent(self.outputs, self.failed, self._entries.maxlen or keep))
        except Exception:
            self.log.exception("share page: could not read earlier results", outputs=str(self.outputs))

    def on_status(self, status: dict[str, Any]) -> None:
        cur = status.get("current")
        # What people wait to see at once: the state, the job being made, and what is waiting
        # (a photo they just dropped). Progress ticks alone render at most every min_interval.
        key = (
            status.get("state"),
            cur.get("job") if isinstance(cur, Mapping) else None,
            repr(status.get("queue")),
            repr(status.get("arriving")),
            status.get("paused_reason"),
            repr(status.get("paused")),
            repr(status.get("active_hours")),
            repr(status.get("batches_done")),
        )
        with self._lock:
            self._status = dict(status)
            if key != self._key or self.clock() - self._rendered_at >= self.min_interval:
                self._key = key
                self._write()
            else:
                self._pending = True

    def on_job_finished(self, event: JobFinished) -> None:
        """Shown at once, or, when the page was written less than ``min_interval`` ago, with the
        next status (the daemon publishes one within half a second of every finished job): a
        backlog finishing several jobs a second then rewrites the page twice a second, not once
        per job on top of that."""
        with self._lock:
            try:
                self._entries.append(entry_from_event(event, self.outputs, self.failed))
            except Exception:
                self.log.exception("share page: could not read a finished job", job=event.job)
            if self.clock() - self._rendered_at >= self.min_interval:
                self._write()
            else:
                self._pending = True
                self._key = None  # the next status is a change: written at once

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._write()

    def _forget_moved(self) -> None:
        """Drop the entries whose folder is gone: a failed job dragged back into the inbox to be tried
        again, or a folder someone deleted. The page never links to nothing, and a retried job is not
        shown as failed beside its new result."""
        if any(not (self.outputs / e.link).is_dir() for e in self._entries):
            kept = [e for e in self._entries if (self.outputs / e.link).is_dir()]
            self._entries = deque(kept, maxlen=self._entries.maxlen)

    def _card(self, entry: Entry) -> str:
        kept = self._cards.get(id(entry))
        if kept is None or kept[0] is not entry:
            kept = self._cards[id(entry)] = (entry, card(entry))
        return kept[1]

    def _write(self) -> None:
        """Render and publish; never raises, since a page problem must not stop the daemon."""
        self._rendered_at = self.clock()
        self._pending = False
        try:
            self._forget_moved()
            page = render(self._status, list(reversed(self._entries)), cards=self._card)
            self._cards = {id(e): self._cards[id(e)] for e in self._entries if id(e) in self._cards}
            fsops.write_padded(self.path, page.encode("utf-8"))
            self.renders += 1
        except Exception as e:
            self._trouble.failed(e)
            self._key = None  # the next status tries again, changed or not
            self._pending = True
        else:
            self._trouble.ok()
