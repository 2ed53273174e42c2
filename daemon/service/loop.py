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

Signal handlers only set flags (see ``cli``); the scanner thread says at once, in the log,
what a stop request will do. ``publishing`` decides when status.json is written and calls the
listeners, never from two threads at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from daemon import logs
from daemon.active_hours import ActiveHours
from daemon.config import Settings
from daemon.encode.ffmpeg import FFmpegUnavailable, select_ffmpeg
from daemon.encode.validate import recipe_errors
from daemon.engine.interface import Generator
from daemon.folders import fsops
from daemon.folders.claim import claim
from daemon.folders.jobs import Folders, Job
from daemon.folders.names import job_files
from daemon.folders.recover import recover
from daemon.folders.scan import InboxScanner
from daemon.folders.trust import Untrusted
from daemon.folders.watch import Watcher
from daemon.job.finish import Result
from daemon.job.prepare import draw_seed, prepare
from daemon.listeners import systemd as notify
from daemon.listeners.events import JobFinished, Listener, tell_folder_done
from daemon.listeners.share_page import SharePage
from daemon.messages import CRASH_LOOP_ERROR
from daemon.prompting.writer import PromptModelError, PromptWriter, writer_for
from daemon.service.batches import Batches
from daemon.service.cancelling import Canceller
from daemon.service.controls import Controls, Pause
from daemon.service.disk_room import DiskRoom
from daemon.service.estimates import Durations, Kind, plan
from daemon.service.executor import Executor, StoppedWhileStarting, ThreadExecutor, WorkersUnfit
from daemon.service.filing import Failed, Filer, fail_job
from daemon.service.flights import Flights
from daemon.service.lock import DaemonLocked, take_lock
from daemon.service.publishing import Publisher
from daemon.service.scanning import InboxMonitor
from daemon.service.status_file import build_status
from daemon.service.stopping import Stopping
from daemon.service.turns import Turns
from daemon.sizing import resolution_to_short_side
from daemon.states import DaemonState, Outcome

__all__ = ["DaemonLocked", "Service", "StartupError", "folders_of"]


class StartupError(Exception):
    """The daemon cannot work with this configuration (e.g. a recipe ffmpeg rejects)."""


def folders_of(settings: Settings) -> Folders:
    p = settings.paths
    return Folders(inbox=p.inbox, outputs=p.outputs, done=p.done, failed=p.failed, state=settings.state_dir)


class Service:
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

    # -- set-up and tear-down ------------------------------------------------------------

    def setup(self) -> None:
        """Take the folders, check ffmpeg and recipes, start the workers, finish what a crash left.

        The lock comes first, so a second daemon on the same folders stops before it starts any
        worker; whatever fails after it lets go of the lock and of the workers it started.
        """
        try:
            self.folders.ensure()
        except Untrusted as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"cannot create the folders: {e}") from None
        self._lock = take_lock(self.folders.state)
        try:
            self._check_encoding()
            gen = self.settings.generation
            warm_up = (resolution_to_short_side(gen.resolution), gen.num_frames) if self._warm_up else None
            try:
                self.executor.start(warm_up=warm_up)
            except StoppedWhileStarting:
                self.executor.close()
                raise  # a stop, not a failure: the caller says so and exits 0
            except WorkersUnfit as e:
                self.executor.close()
                raise StartupError(str(e)) from e
            except Exception as e:
                self.executor.close()
                raise StartupError(f"the model could not be loaded or warmed up: {e}") from e
            self._load_writer()
        except BaseException:
            self._lock.close()
            self._lock = None
            raise
        self.durations.load()
        # What a kill -9 mid-write left beside status.json, the share page and the webhook spool;
        # claimed jobs' leftovers are recovery's.
        for folder in (self.folders.state, self.folders.outputs, self.folders.state / "webhooks"):
            fsops.sweep_temps(folder)
        # The page for the people on the share is part of the product, not an option.
        self.listeners.insert(0, SharePage(self.folders.outputs, self.folders.failed))
        self.filer.start()
        again, exhausted = recover(self.folders, self.settings.limits.max_attempts)
        for job in [*exhausted, *again]:
            self.batches.claimed(job)
        for job in exhausted:
            crashes = job.attempts - 1
            self.log.error("job failed after repeated crashes", job=job.name, attempts=crashes)
            self.filer.file_now(Failed(job, CRASH_LOOP_ERROR.format(crashes=crashes)))
        self._taking()  # says at once, in the log and the first status, when the disk is full
        self._resume.extend(again)
        for job in again:
            self.log.warning("resuming job interrupted by a crash", job=job.name, attempt=job.attempts)
        if self._watch:
            watch = self.settings.watch
            self._watcher = Watcher(self.folders.inbox, self.wake, watch.mode, max_depth=watch.max_depth)
            self._watcher.start()
        model = self.executor.model
        self.log.info(
            "watching",
            hint=(
                f"drop an image and a prompt file with the same name (cat.jpg and cat.txt) into "
                f"{self.folders.inbox}; the clips appear in {self.folders.outputs}"
            ),
            inbox=str(self.folders.inbox),
            outputs=str(self.folders.outputs),
            mode=self._watcher.mode if self._watcher else "poll",
            model=model.model_id,
            device=model.device,
            capacity=self.executor.capacity,
        )
        self.publish_status()
        self.monitor.start()
        self.started.set()
        notify.ready()  # only now: model loaded, recipes checked, folders ready, crash recovered

    def _load_writer(self) -> None:
        """The prompt model, after the video model: where it goes depends on the memory that one left."""
        self.writer = writer_for(self.settings)
        if self.writer is None:
            return
        try:
            self.writer.load()
        except PromptModelError as e:
            self.executor.close()
            raise StartupError(str(e)) from None
        except Exception as e:
            self.executor.close()
            raise StartupError(f"the prompt model could not be loaded: {e}") from e

    def _check_encoding(self) -> None:
        """The ffmpeg chosen, and every recipe tried on a synthetic clip: a broken one stops the start."""
        try:
            ffmpeg = select_ffmpeg(self.settings.output.ffmpeg)
        except FFmpegUnavailable as e:
            raise StartupError(str(e)) from None
        self.log.info("ffmpeg", path=ffmpeg.path, version=ffmpeg.version, chosen_by=ffmpeg.chosen_by)
        broken = [
            f"recipe {name!r} does not work with this ffmpeg: {error}"
            for name, error in recipe_errors(self.settings.recipe_table(), ffmpeg).items()
            if error is not None
        ]
        if broken:
            raise StartupError("; ".join(broken))

    def teardown(self) -> None:
        """Stop looking, let the filing thread file every job handed over, release the folders."""
        self.monitor.stop()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.filer.stop()
        self.durations.save()
        self.executor.close()
        if self.writer is not None:
            self.writer.close()
        if self._lock is not None:
            self.publish_status(DaemonState.STOPPED)
            self._lock.close()
            self._lock = None
        for listener in self.listeners:
            try:
                listener.close()
            except Exception:
                self.log.exception("listener failed to close", listener=type(listener).__name__)

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

    def _next_job(self) -> tuple[Job, datetime] | None:
        if self._resume:
            job = self._resume.popleft()
            return job, job.claimed_at
        while not self.stop.is_set() and (group := self.monitor.take()) is not None:
            wall = datetime.now().astimezone()
            job = claim(self.folders, group, wall, seed=draw_seed(self.settings))
            if job is not None:
                self.batches.claimed(job)
                if group.src_dir is not None:
                    self.log.info(
                        "retrying a failed job dragged back into the inbox",
                        job=job.name,
                        returned_folder=group.src_dir.as_posix(),
                    )
                return job, wall - timedelta(seconds=max(0.0, self.clock() - group.since))
        return None

    # -- one job: prepare and submit, then collect (loop thread) -------------------------

    def _start(self, job: Job, queued_at: datetime) -> None:
        """Check and size a claimed job and submit it; a job with bad input is filed as failed."""
        log = self.log.bind(job=job.name)
        logs.open_job_log(job.name, job.out / job_files(job.name).log)
        try:
            prepared = prepare(
                job, self.settings, self.executor.model, log, queued_at=queued_at, writer=self.writer
            )
        except Exception as e:
            self.filer.put(fail_job(job, e, log, self._where(self.folders.failed, job)))
        else:
            self.flights.submit(prepared)
        self._want_status()

    def _collect(self) -> None:
        """Hand every job whose generation ended to the filing thread, in the order they ended."""
        for item in self.flights.collect():
            # Blocks while the filing thread is encode_queue jobs behind: bounded memory.
            self.filer.put(item)
            self._want_status()

    def _enforce_stop(self) -> None:
        self.stopping.enforce(bool(self.flights), self.settings.watch.stop_grace, self.executor.cancel)

    def _explain_stop(self) -> None:
        self.stopping.explain(self.flights.names(), self.settings.watch.stop_grace)

    # -- status --------------------------------------------------------------------------

    def publish_status(self, state: str | None = None) -> None:
        self.publisher.publish(state)

    def _status(self, state: str | None, now: float) -> dict[str, Any]:
        queue, ready = self.monitor.queued()
        left, encode, waiting = self._estimates(queue, now)
        return build_status(
            state=state or (DaemonState.BUSY if self.flights else DaemonState.IDLE),
            model=self.executor.model.model_id,
            workers=self.executor.board.snapshot(),
            in_flight=self.flights.names(),
            encoding=list(self.filer.encoding),
            queue=queue,
            queue_length=ready + len(self._resume),
            scanner=self.monitor.scanner,
            recent=[
                {
                    "job": r.job.name,
                    "outcome": Outcome.DONE if r.ok else Outcome.FAILED,
                    "error": r.error,
                    # Under outputs/ or failed/: `i2vd status` leaves out a folder no longer there.
                    "folder": (r.job.rel_dir / r.job.name).as_posix(),
                }
                # A copy first (one C call, atomic under the GIL): the filing thread appends to
                # the deque meanwhile, and iterating it while that happens raises.
                for r in list(self.results)[:-21:-1]
            ],
            now=now,
            paused_reason=self.disk.last,
            disk_free_mb=dict(self.disk.free),
            paused=self._held_shown[0].as_status() if self._held_shown[0] else None,
            active_hours=self._hours_status(),
            left=left,
            encode_seconds=encode,
            waiting=waiting,
            batches=list(self.batches_done),
        )

    def _batches_done(self) -> None:
        """Tell the webhooks and the page of each folder whose last waiting job was filed."""
        for event in self.batches.step(self.monitor.waiting_in):
            self.log.info(
                "every job of a folder is filed",
                folder=event.folder,
                done=event.done,
                failed=event.failed,
                first_job=event.first_job,
                last_job=event.last_job,
            )
            self.batches_done.appendleft(event.to_json())
            self.publisher.tell(lambda listener, e=event: tell_folder_done(listener, e))
            self._want_status()

    def _kind(self, width: int, height: int, frames: int, steps: int) -> Kind:
        return (width, height, frames, steps, self.executor.capacity)

    def _estimates(
        self, queue: list[str], now: float
    ) -> tuple[dict[str, float], float, list[dict[str, Any]]]:
        """What ``estimates.plan`` says of the jobs in flight and the listed waiting ones."""
        hold: float | None = 0.0
        if self._held_shown[0] is not None or self.disk.last:
            hold = None  # nothing starts until someone acts: no start time is promised
        elif self.hours.window is not None:
            hold = self.hours.opens_in()
        in_flight = [(p.job.name, self._kind(p.request.width, p.request.height, p.request.num_frames,
                      p.request.steps)) for p in self.flights.prepared()]  # fmt: skip
        return plan(
            self.durations,
            in_flight,
            self.executor.board.snapshot(),
            self.executor.capacity,
            queue,
            now=now,
            wall=self._wall().timestamp(),
            hold=hold,
        )

    def _hours_status(self) -> dict[str, Any] | None:
        if self.hours.window is None:
            return None
        opens = self.hours.opens_at()
        return {
            "window": self.hours.describe(),
            "open": opens is None,
            "opens_at": opens.isoformat(timespec="seconds") if opens else None,
        }

    def _where(self, base: Path, job: Job) -> str:
        """Where a job's files go, as people on the share see it (``outputs/team-a/cup_…``)."""
        path = base / job.rel_dir / job.name
        share = self.folders.outputs.parent
        return path.relative_to(share).as_posix() if path.is_relative_to(share) else str(path)

    def _finished(self, result: Result, event: JobFinished) -> None:
        """Called on the filing thread once a job is filed."""
        self.results.append(result)
        self.batches.filed(result.job, result.ok)
        record = event.record
        if result.ok and record is not None:
            par, times = record.parameters, record.timings
            sizes = (par.width, par.height, par.num_frames, par.steps)
            if all(sizes) and times.generate_seconds is not None:
                kind = self._kind(*sizes)  # type: ignore[arg-type]
                self.durations.add(kind, times.generate_seconds, times.encode_seconds)
        if self._once is not None:
            self._once.append(result)
        self.publisher.tell(lambda listener: listener.on_job_finished(event))
        self._want_status()
