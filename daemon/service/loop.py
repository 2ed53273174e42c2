"""The daemon's main loop: one small ``step()`` called until a stop is asked for.

Four threads (or more), each doing one kind of work in order:

- the scanner thread (``scanning``) looks at the inbox all the time and says what is ready;
- the loop (the caller's thread) claims ready jobs, checks and sizes them (``job.prepare``)
  and hands them to the executor while fewer than its ``capacity`` are in flight
  (``flights`` keeps those until they end) and the disks have room (``disk_room``); claims
  happen on this thread only; it also stops a job that runs past ``limits.max_job_seconds``;
- the executor's workers generate, with the model kept warm (``executor``: threads here,
  or Ray workers elsewhere);
- the filing thread (``filing``) encodes and files each job in the order it finished.

Signal handlers only set flags (see ``cli.run``); the scanner thread says at once, in the log,
what a stop request will do. ``publishing`` decides when status.json is written and calls the
listeners, never from two threads at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from daemon import logs
from daemon.active_hours import ActiveHours
from daemon.config import Settings
from daemon.engine.interface import Generator
from daemon.folders.jobs import Folders, Job
from daemon.folders.scan import InboxScanner
from daemon.folders.watch import Watcher
from daemon.job.finish import Result
from daemon.listeners import systemd as notify
from daemon.listeners.events import Listener
from daemon.prompting.writer import PromptWriter
from daemon.service.batches import Batches
from daemon.service.cancelling import Canceller
from daemon.service.controls import Controls, Pause
from daemon.service.disk_room import DiskRoom
from daemon.service.estimates import Durations
from daemon.service.executor import Executor, ThreadExecutor
from daemon.service.filing import Filer
from daemon.service.flights import Flights
from daemon.service.job_flow import JobFlow
from daemon.service.lock import DaemonLocked
from daemon.service.publishing import Publisher
from daemon.service.scanning import InboxMonitor
from daemon.service.startup import Lifecycle, StartupError
from daemon.service.status_report import StatusReport
from daemon.service.stopping import Stopping
from daemon.service.turns import Turns

__all__ = ["DaemonLocked", "Service", "StartupError", "folders_of"]


def folders_of(settings: Settings) -> Folders:
    p = settings.paths
    return Folders(inbox=p.inbox, outputs=p.outputs, done=p.done, failed=p.failed, state=settings.state_dir)


class Service(Lifecycle, JobFlow, StatusReport):
    """The daemon: set up and torn down by ``startup``, jobs started and finished by ``job_flow``,
    status made by ``status_report``; the loop itself is here."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor | Generator,
        *,
        clock: Callable[[], float] = time.monotonic,
        watch: bool = True,
        warm_up: bool = False,
        listeners: list[Listener] | None = None,
        reload: Callable[[], Settings] | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._work = threading.Event()  # for the loop: jobs ready, a job finished, progress, a stop
        if isinstance(executor, Generator):
            executor = ThreadExecutor([executor], owned=False)  # the caller keeps its model
        self.executor: Executor = executor
        self.executor.board.on_change = self._work.set
        self.executor.board.clock = clock
        self.folders = folders_of(settings)
        self.listeners: list[Listener] = list(listeners or [])
        self._reload_settings = reload
        self._warm_up = warm_up
        self.log = logs.get()
        self.stopping = Stopping(clock, self.log)
        self.stop = self.stopping.stop  # warm stop: finish the jobs in flight, claim no more
        self.abort = self.stopping.abort  # cold stop: interrupt them, their files go back to the inbox
        self.wake = threading.Event()  # look at the inbox now: the watcher saw a change, or a signal came
        self.reload_requested = threading.Event()  # SIGHUP: re-read the config between jobs
        self.started = threading.Event()  # set up and looking at the inbox (when systemd hears READY)
        self.results: deque[Result] = deque(maxlen=50)
        self._resume: deque[Job] = deque()
        self.flights = Flights(
            self.executor,
            clock=clock,
            wake=self._work.set,
            abort=self.abort,
            max_attempts=lambda: self.settings.limits.max_attempts,
            failed_where=lambda job: self._where(self.folders.failed, job),
        )
        self._lock: IO[str] | None = None
        self.writer: PromptWriter | None = None  # [prompting]: loaded at setup, beside the video model
        # Where the daemon writes: a job's files are made in the state folder, then moved to outputs/.
        self.disk = DiskRoom(
            [self.folders.outputs, self.folders.state],
            lambda: self.settings.limits.min_free_mb,
            clock=clock,
        )
        self._paused_shown: str | None = None
        # Held by the operator (i2vd pause) or outside [queue] active_hours: no new job starts.
        self.controls = Controls(self.folders.state)
        self._wall = wall
        self.hours = ActiveHours.of(settings.queue.active_hours, now=wall)
        self._held_shown: tuple[Pause | None, str | None] = (None, None)
        self.durations = Durations(self.folders.state)  # how long recent jobs took: the ETAs
        self.batches = Batches(wall)  # when a folder's last waiting job is filed
        self.batches_done: deque[dict[str, Any]] = deque(maxlen=5)
        self.publisher = Publisher(
            self.folders.state,
            self.listeners,
            self.executor.board,
            self._status,
            clock=clock,
            wake=self._work.set,
        )
        self._watch = watch
        self._once: list[Result] | None = None  # every result of a run_once, however many
        self._watcher: Watcher | None = None
        self.monitor = InboxMonitor(
            self._make_scanner(settings),
            poll_interval=settings.watch.poll_interval,
            wake=self.wake,
            on_ready=self._work.set,
            on_change=self._want_status,
            each_round=self._explain_stop,
            turns=Turns(settings.queue.order, settings.queue.priority),
        )
        self.filer = filer = Filer(
            self.folders,
            lambda: self.settings,
            abort=self.abort,
            where=self._where,
            finished=self._finished,
            size=settings.output.encode_queue,
            disk=self.disk,
        )
        self.canceller = Canceller(
            self.folders,
            self.controls,
            lambda: self.monitor,
            self.flights,
            self.executor,
            filer,
            clock=clock,
            pair_timeout=lambda: self.settings.watch.pair_timeout,
            changed=self._want_status,
            claimed=self.batches.claimed,
        )

    @property
    def scanner(self) -> InboxScanner:
        return self.monitor.scanner

    def _make_scanner(self, settings: Settings) -> InboxScanner:
        return InboxScanner(
            self.folders.inbox,
            ignore=settings.watch.ignore,
            settle_seconds=settings.watch.settle_seconds,
            pair_timeout=settings.watch.pair_timeout,
            clock=self.clock,
            max_depth=settings.watch.max_depth,
            alone_timeout=settings.prompting.wait_seconds if settings.prompting.when != "never" else None,
        )

    # -- the loop ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: warm stop (finish the jobs in flight within the grace). Second: cold stop.

        Only flags: it runs in a signal handler. The scanner thread logs what will happen.
        """
        self.stopping.request()
        self.wake.set()
        self._work.set()

    def run(self) -> None:
        self.setup()
        try:
            while not self.stop.is_set() or self.flights:
                self.step()
        finally:
            self.teardown()

    def step(self) -> bool:
        """Collect finished jobs, then claim, check and submit one if there is room; else wait.

        Returns whether a job was taken.
        """
        if self.reload_requested.is_set():
            self._reload()
        self._work.clear()
        self._collect()
        self.canceller.step()
        self._batches_done()
        self._enforce_stop()
        self.flights.enforce_cap(self.settings.limits.max_job_seconds)
        room = self._taking()  # looked at while busy too: status says the disk is full at once
        held = self._held()
        if not self.stop.is_set() and len(self.flights) < self.executor.capacity and room and not held:
            job = self._next_job()
            if job is not None:
                self._start(*job)
                return True
        self._work.wait(self.publisher.due(self.settings.watch.poll_interval))
        return False

    def _want_status(self) -> None:
        self.publisher.want()

    def _taking(self) -> bool:
        """Whether the disks have room for a new job (``disk_room``); publishes a change of it."""
        reason = self.disk.reason()
        if reason != self._paused_shown:
            self._paused_shown = reason
            self._want_status()
        return reason is None

    def _held(self) -> bool:
        """Whether new jobs wait for the operator (``i2vd pause``) or for ``[queue] active_hours``
        to open; says so in the log and the status when that changes."""
        pause = self.controls.paused()
        opens = self.hours.opens_at()
        shown = (pause, self.hours.describe() if opens is not None else None)
        if shown != self._held_shown:
            was, self._held_shown = self._held_shown, shown
            if pause is not None and was[0] is None:
                self.log.warning(
                    "paused: the jobs in progress finish, no new job starts until i2vd resume",
                    since=pause.since,
                    by=pause.by,
                )
            elif pause is None and was[0] is not None:
                self.log.info("resumed: new jobs start again")
            if shown[1] is not None and was[1] is None:
                self.log.info(
                    "outside [queue] active_hours: no new job starts until the window opens",
                    active_hours=shown[1],
                    opens_at=opens.isoformat(timespec="minutes") if opens else None,
                )
            elif shown[1] is None and was[1] is not None:
                self.log.info("inside [queue] active_hours: new jobs start", active_hours=was[1])
            self._want_status()
        return pause is not None or opens is not None

    def run_once(self) -> list[Result]:
        """Process every job in the inbox, waiting while files are still being written, then stop.

        Files are judged as the running daemon judges them: a pair once settled, an unpaired
        file after ``pair_timeout``. It ends on a scan begun after the last claim that finds
        nothing ready and nothing waiting, with no job in flight.
        """
        self._once = []
        self.setup()
        try:
            while not self.stop.is_set() or self.flights:
                mark = self.monitor.started
                if self.step() or self.flights or self._resume:
                    continue
                if self._held_shown != (None, None):
                    self.log.warning("paused, or outside [queue] active_hours: jobs stay in the inbox")
                    break
                seq, ready, waiting = self.monitor.last
                if seq > mark and ready == 0 and waiting == 0 and self.monitor.queued()[1] == 0:
                    break
        finally:
            self.teardown()
        results, self._once = self._once, None
        return results

    def _reload(self) -> None:
        """SIGHUP: re-read the config between jobs; a config that fails keeps the old one."""
        self.reload_requested.clear()
        if self._reload_settings is None:
            return
        notify.reloading()
        try:
            new = self._reload_settings()
        except Exception as e:
            self.log.error("config reload failed; keeping the running config", error=str(e))
            return
        finally:
            notify.ready()
        # These are built once at start (folders and lock, model, listeners).
        fixed = ("paths", "model", "metrics", "webhooks", "cluster", "prompting")
        if any(getattr(new, k, None) != getattr(self.settings, k, None) for k in fixed):
            self.log.warning(
                "changes to [paths], [model], [metrics], [webhooks], [cluster] and [prompting] need a restart"
            )
            new = new.model_copy(update={k: getattr(self.settings, k) for k in fixed if hasattr(new, k)})
        self.settings = new
        self.hours = ActiveHours.of(new.queue.active_hours, now=self._wall)
        self.monitor.replace(
            self._make_scanner(new), new.watch.poll_interval, Turns(new.queue.order, new.queue.priority)
        )
        self.log.info("config reloaded")

    def _enforce_stop(self) -> None:
        self.stopping.enforce(bool(self.flights), self.settings.watch.stop_grace, self.executor.cancel)

    def _explain_stop(self) -> None:
        self.stopping.explain(self.flights.names(), self.settings.watch.stop_grace)
