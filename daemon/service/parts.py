"""The parts of ``loop.Service`` its mixins share (``Lifecycle``, ``JobFlow``, ``StatusReport``),
declared once: ``Service.__init__`` sets them, the mixins read them."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.active_hours import ActiveHours
    from daemon.config import Settings
    from daemon.folders.jobs import Folders, Job
    from daemon.folders.watch import Watcher
    from daemon.job.finish import Result
    from daemon.listeners.events import Listener
    from daemon.prompting.writer import PromptWriter
    from daemon.service.batches import Batches
    from daemon.service.controls import Pause
    from daemon.service.disk_room import DiskRoom
    from daemon.service.estimates import Durations, Kind
    from daemon.service.executor import Executor
    from daemon.service.filing import Filer
    from daemon.service.flights import Flights
    from daemon.service.publishing import Publisher
    from daemon.service.scanning import InboxMonitor


class ServiceParts:
    """What ``loop.Service`` holds, for the mixins that make it up."""

    settings: Settings
    clock: Callable[[], float]
    log: Any
    folders: Folders
    executor: Executor
    listeners: list[Listener]
    monitor: InboxMonitor
    filer: Filer
    flights: Flights
    publisher: Publisher
    batches: Batches
    durations: Durations
    disk: DiskRoom
    results: deque[Result]
    writer: PromptWriter | None
    stop: threading.Event
    started: threading.Event
    wake: threading.Event
    batches_done: deque[dict[str, Any]]
    hours: ActiveHours
    publish_status: Callable[..., None]
    _resume: deque[Job]
    _once: list[Result] | None
    _want_status: Callable[[], None]
    _kind: Callable[[int, int, int, int], Kind]
    _held_shown: tuple[Pause | None, str | None]
    _wall: Callable[[], datetime]
    _lock: IO[str] | None
    _warm_up: bool
    _watch: bool
    _watcher: Watcher | None
    _taking: Callable[[], bool]
