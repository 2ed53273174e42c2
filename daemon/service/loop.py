"""The daemon's main loop: one small ``step()`` called until a stop is asked for.

Three threads, each doing one kind of work in order:

- the scanner thread looks at the inbox every poll interval (sooner when the watcher
  sets ``wake``), also while a job generates: files dropped meanwhile are listed in the
  status at once and their settle time runs; it only publishes what is ready;
- the loop (the caller's thread) claims ready jobs and generates, one at a time, with
  the model kept warm; claims happen on this thread only;
- the encoder thread turns finished frames into files and files every job (done or
  failed) in the order the loop finished them, so results keep their order.

Between loop and encoder a bounded queue: when the encoder falls behind, the loop waits,
so the frames in memory stay bounded. Signal handlers only set flags (see ``cli``); the
scanner thread is the one that says, at once, what a stop request will do.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from daemon import logs
from daemon.config import Settings
from daemon.encode import FFmpegUnavailable, select_ffmpeg, validate_recipe
from daemon.errors import JobError
from daemon.folders import names
from daemon.folders.jobs import Folders, Job, claim, finish_done, finish_failed, recover, release
from daemon.folders.scan import Group, InboxScanner
from daemon.folders.watch import Watcher
from daemon.generate import Generator
from daemon.job.run import Generated, Result, encode_generated, generate_job
from daemon.listeners import systemd as notify
from daemon.listeners.events import JobFinished, Listener
from daemon.listeners.share_page import SharePage
from daemon.status import write_status

INTERNAL_ERROR = (
    "Something went wrong inside the video daemon while making this clip; it is not a problem with "
    "your files as far as we can tell. Move the files back into the inbox to try again, and if it "
    "fails again tell the operator (the details are in the log beside this file)."
)


class Aborted(Exception):
    """Raised from the progress callback when a cold stop interrupts a generation."""


class DaemonLocked(Exception):
    """Another daemon already serves these folders."""


class StartupError(Exception):
    """The daemon cannot work with this configuration (e.g. a recipe ffmpeg rejects)."""


def folders_of(settings: Settings) -> Folders:
    p = settings.paths
    return Folders(inbox=p.inbox, outputs=p.outputs, done=p.done, failed=p.failed, state=settings.state_dir)


@dataclass
class _Failed:
    """A job that failed before encoding; filed by the encoder thread to keep the order."""

    job: Job
    error: str | None  # None: interrupted, its files go back to the inbox


_STOP_ENCODER = object()


class Service:
    def __init__(
        self,
        settings: Settings,
        generator: Generator,
        *,
        clock: Callable[[], float] = time.monotonic,
        watch: bool = True,
        listeners: list[Listener] | None = None,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.clock = clock
        self.folders = folders_of(settings)
        self.scanner = self._make_scanner(settings)
        self.listeners: list[Listener] = list(listeners or [])
        self._reload_settings = reload
        self.stop = threading.Event()  # warm stop: finish the current job, claim no more
        self.abort = threading.Event()  # cold stop: interrupt the current job, return it to the inbox
        self.wake = threading.Event()  # look at the inbox now: the watcher saw a change, or a signal came
        self._work = threading.Event()  # for the loop: jobs are ready, or a stop or reload is asked for
        self.reload_requested = threading.Event()  # SIGHUP: re-read the config between jobs
        self.log = logs.get()
        self.results: deque[Result] = deque(maxlen=50)
        self._ready: deque[Group] = deque()  # written by the scanner thread, taken by the loop
        self._ready_lock = threading.Lock()
        self._resume: deque[Job] = deque()
        self._scanning: threading.Thread | None = None
        self._scan_stop = threading.Event()
        # Scans started, and (number, ready, waiting) of the last one finished: run_once ends
        # only on a scan begun after its last claim that saw nothing left.
        self._scans_started = 0
        self._last_scan: tuple[int, int, int] = (0, 0, 0)
        self._told_stop = 0  # stop requests already explained in the log (1 warm, 2 cold)
        self._shown: tuple[Any, ...] | None = None  # the inbox as last published
        self._stop_at: float | None = None
        self._lock: IO[str] | None = None
        self._current: dict[str, Any] | None = None
        self._status_at = float("-inf")
        # Listeners are called with this held, so never from two threads at once.
        self._status_lock = threading.RLock()
        self._encode_q: queue.Queue[Any] = queue.Queue(maxsize=settings.output.encode_queue)
        self._encoding: list[str] = []  # jobs handed to the encoder, oldest first
        self._encoder: threading.Thread | None = None
        self._watch = watch
        self._once: list[Result] | None = None  # every result of a run_once, however many
        self._watcher: Watcher | None = None

    def _make_scanner(self, settings: Settings) -> InboxScanner:
        return InboxScanner(
            self.folders.inbox,
            ignore=settings.watch.ignore,
            settle_seconds=settings.watch.settle_seconds,
            pair_timeout=settings.watch.pair_timeout,
            clock=self.clock,
        )

    # -- set-up and tear-down ------------------------------------------------------------

    def setup(self) -> None:
        """Check ffmpeg and recipes, create the folders, take the lock, finish what a crash left, start."""
        try:
            ffmpeg = select_ffmpeg(self.settings.output.ffmpeg)
        except FFmpegUnavailable as e:
            raise StartupError(str(e)) from None
        self.log.info("ffmpeg", path=ffmpeg.path, version=ffmpeg.version, chosen_by=ffmpeg.chosen_by)
        broken = {
            name: err
            for name, recipe in self.settings.recipe_table().items()
            if (err := validate_recipe(name, recipe, ffmpeg=ffmpeg)) is not None
        }
        if broken:
            raise StartupError(
                "; ".join(
                    f"recipe {name!r} does not work with this ffmpeg: {err}" for name, err in broken.items()
                )
            )
        self.folders.ensure()
        self._take_lock()
        # The page for the people on the share is part of the product, not an option.
        self.listeners.insert(0, SharePage(self.folders.outputs, self.folders.failed))
        self._encoder = threading.Thread(target=self._encode_loop, name="i2vd-encoder", daemon=True)
        self._encoder.start()
        again, exhausted = recover(self.folders, self.settings.limits.max_attempts)
        for job in exhausted:
            crashes = job.attempts - 1
            self.log.error("job failed after repeated crashes", job=job.name, attempts=crashes)
            self._file(
                _Failed(
                    job,
                    f"Making this clip stopped the video daemon {crashes} times in a row, so it was set "
                    "aside to protect the other jobs. Try a smaller resolution or fewer frames, or ask "
                    "the operator to look at the daemon's log.",
                )
            )
        self._resume.extend(again)
        for job in again:
            self.log.warning("resuming job interrupted by a crash", job=job.name, attempt=job.attempts)
        if self._watch:
            self._watcher = Watcher(self.folders.inbox, self.wake, self.settings.watch.mode)
            self._watcher.start()
        mode = self._watcher.mode if self._watcher else "poll"
        self.log.info(
            "watching",
            inbox=str(self.folders.inbox),
            outputs=str(self.folders.outputs),
            mode=mode,
            model=self.generator.model_id,
            device=getattr(self.generator, "device", None),
        )
        self.publish_status("idle")
        self._scan_stop.clear()
        self._scanning = threading.Thread(target=self._scan_loop, name="i2vd-scanner", daemon=True)
        self._scanning.start()
        notify.ready()  # only now: model loaded, recipes checked, folders ready, crash recovered

    def teardown(self) -> None:
        """Let the encoder file every generated job, then stop watching and release the lock."""
        if self._scanning is not None:
            self._scan_stop.set()
            self.wake.set()
            self._scanning.join()
            self._scanning = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._encoder is not None:
            self._encode_q.put(_STOP_ENCODER)
            self._encoder.join()
            self._encoder = None
        if self._lock is not None:
            self.publish_status("stopped")
            self._lock.close()
            self._lock = None
        for listener in self.listeners:
            try:
                listener.close()
            except Exception:
                self.log.exception("listener failed to close", listener=type(listener).__name__)

    def _take_lock(self) -> None:
        path = self.folders.state / names.LOCK_FILE
        f = open(path, "a+")  # noqa: SIM115 - held open for the whole run: it is the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DaemonLocked(
                f"another i2vd ({holder}) is already running on these folders (lock {path}); "
                "run one daemon per set of folders"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._lock = f

    # -- the loop ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: warm stop (finish the current job within the grace). Second: cold stop.

        Only flags: it runs in a signal handler. The scanner thread logs what will happen.
        """
        if self.stop.is_set():
            self.abort.set()
        else:
            self._stop_at = self.clock()
        self.stop.set()
        self.wake.set()
        self._work.set()

    def run(self) -> None:
        self.setup()
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.teardown()

    def step(self) -> bool:
        """Claim and generate one ready job and hand it to the encoder; else wait a little.

        Returns whether a job was taken.
        """
        if self.reload_requested.is_set():
            self._reload()
        self._work.clear()
        job = self._next_job()
        if job is None:
            if self.clock() - self._status_at > 30:
                self.publish_status("idle")  # keeps status.json fresh so `i2vd status` can tell we live
            self._work.wait(self.settings.watch.poll_interval)
            return False
        self._generate(*job)
        return True

    def run_once(self) -> list[Result]:
        """Process every job in the inbox, waiting while files are still being written, then stop.

        Files are judged as the running daemon judges them: a pair once settled, an unpaired
        file after ``pair_timeout``. It ends on a scan begun after the last claim that finds
        nothing ready and nothing waiting.
        """
        self._once = []
        self.setup()
        try:
            while not self.stop.is_set():
                mark = self._scans_started
                if self.step():
                    continue
                with self._ready_lock:
                    queued = bool(self._ready)
                seq, ready, waiting = self._last_scan
                if seq > mark and not queued and not self._resume and ready == 0 and waiting == 0:
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
        fixed = ("paths", "model", "metrics", "webhooks")
        if any(getattr(new, k) != getattr(self.settings, k) for k in fixed):
            self.log.warning("changes to [paths], [model], [metrics] and [webhooks] need a restart")
            new = new.model_copy(update={k: getattr(self.settings, k) for k in fixed})
        self.settings = new
        scanner = self._make_scanner(new)
        with self._ready_lock:
            self.scanner = scanner  # the scanner thread takes it up at its next scan
            self._ready.clear()
        self.wake.set()
        self.log.info("config reloaded")

    def _next_job(self) -> tuple[Job, datetime] | None:
        if self._resume:
            job = self._resume.popleft()
            return job, job.claimed_at
        while not self.stop.is_set():
            with self._ready_lock:
                if not self._ready:
                    return None
                group = self._ready.popleft()
            wall = datetime.now().astimezone()
            job = claim(self.folders, group, wall)
            if job is not None:
                if group.src_dir is not None:
                    self.log.info(
                        "retrying a failed job dragged back into the inbox",
                        job=job.name,
                        returned_folder=group.src_dir.as_posix(),
                    )
                return job, wall - timedelta(seconds=max(0.0, self.clock() - group.since))
        return None

    # -- the scanner thread --------------------------------------------------------------

    def _scan_loop(self) -> None:
        """Look at the inbox until teardown: every poll interval, sooner when woken."""
        while not self._scan_stop.is_set():
            self.wake.clear()
            self._explain_stop()
            try:
                due = self._scan()
            except Exception:
                # The loop must never go blind for good: log, and look again next time.
                self.log.exception("scanning the inbox failed")
                due = None
            poll = self.settings.watch.poll_interval
            # Wake when the next waiting pair is due to settle, not a whole poll later.
            self.wake.wait(poll if due is None else max(0.0, min(poll, due)))

    def _scan(self) -> float | None:
        """One look at the inbox: publish what is ready to the loop and what waits to people."""
        with self._ready_lock:
            scanner = self.scanner
        self._scans_started += 1
        seq = self._scans_started
        ready = scanner.scan()
        with self._ready_lock:
            if scanner is self.scanner:
                # Rescanning replaces the list (no per-claim directory walk): a backlog of
                # thousands costs one walk per poll interval, whatever the claim rate.
                self._ready = deque(ready)
        self._last_scan = (seq, len(ready), scanner.waiting)
        if ready:
            self._work.set()
        shown = (
            [(g.rel_dir / g.name).as_posix() for g in ready[:200]],
            scanner.pending,
            scanner.missing,
        )
        if shown != self._shown:
            self._shown = shown
            self.publish_status("busy" if self._current else "idle")
        return scanner.next_ready_in

    def _explain_stop(self) -> None:
        """Say at once what a stop request will do (signal handlers only set flags)."""
        wanted = 2 if self.abort.is_set() else 1 if self.stop.is_set() else 0
        if wanted <= self._told_stop:
            return
        self._told_stop = wanted
        current = (self._current or {}).get("job")
        if wanted == 1:
            grace = self.settings.watch.stop_grace
            if current:
                text = (
                    f"stop requested: finishing {current} (at most {grace:g} s more), then stopping; "
                    "press Ctrl-C again (or send SIGTERM again) to interrupt it and put its files "
                    "back in the inbox"
                )
            else:
                text = "stop requested: no job is running; stopping"
            self.log.info(text)
            notify.stopping("finishing the current job (warm stop)" if current else "stopping")
        else:
            self.log.info(
                f"interrupting {current} now; its files go back to the inbox" if current else "stopping now"
            )
            notify.stopping("interrupting the current job (cold stop)")

    # -- status --------------------------------------------------------------------------

    def publish_status(self, state: str) -> None:
        with self._ready_lock:
            queue = [(g.rel_dir / g.name).as_posix() for g in list(self._ready)[:200]]
            queue_length = len(self._ready) + len(self._resume)
        with self._status_lock:
            self._status_at = self.clock()
            status = {
                "state": state,
                "pid": os.getpid(),
                "model": self.generator.model_id,
                "current": self._current,
                "encoding": list(self._encoding),
                "queue": queue,
                "queue_length": queue_length,
                # Seen but not ready: still being written, or waiting for the other file of its pair.
                "arriving": [list(p) for p in self.scanner.pending],
                "inbox_missing": self.scanner.missing,
                "inbox_problem": self.scanner.missing_reason,
                "recent": [
                    {"job": r.job.name, "outcome": "done" if r.ok else "failed", "error": r.error}
                    for r in reversed(self.results)
                ][:20],
            }
            write_status(self.folders.state, status)
            self._tell(lambda listener: listener.on_status(status))

    def _tell(self, call: Callable[[Listener], None]) -> None:
        for listener in self.listeners:
            try:
                call(listener)
            except Exception:
                self.log.exception("listener failed", listener=type(listener).__name__)

    # -- one job: generation (loop thread) -----------------------------------------------

    def _on_step(self, job: Job, log: Any) -> Callable[[int, int], None]:
        t0 = self.clock()

        def on_step(step: int, total: int) -> None:
            now = self.clock()
            grace = self.settings.watch.stop_grace
            if self._stop_at is not None and now - self._stop_at > grace and not self.abort.is_set():
                log.warning("stop grace is over; interrupting the job", grace_seconds=grace)
                self.abort.set()
            if self.abort.is_set():
                raise Aborted()
            eta = (now - t0) / step * (total - step) if step else None
            self._current = {"job": job.name, "step": step, "total": total, "eta_seconds": eta}
            log.debug("step", step=step, total=total)
            if now - self._status_at >= 1.0 or step == total:
                self.publish_status("busy")

        return on_step

    def _generate(self, job: Job, queued_at: datetime) -> None:
        """Make one claimed job's frames and queue it for the encoder, whatever happens."""
        log = self.log.bind(job=job.name)
        logs.open_job_log(job.name, job.out / f"{job.name}.log")
        self._current = {"job": job.name, "step": 0, "total": None, "eta_seconds": None}
        self.publish_status("busy")
        item: Generated | _Failed
        try:
            item = generate_job(
                job, self.settings, self.generator, log, queued_at=queued_at, on_step=self._on_step(job, log)
            )
        except Aborted:
            log.warning("job interrupted by shutdown; its files go back to the inbox")
            item = _Failed(job, None)
        except JobError as e:
            log.warning("job failed", reason=str(e), folder=self._where(self.folders.failed, job))
            item = _Failed(job, str(e))
        except Exception:
            log.exception("internal error", folder=self._where(self.folders.failed, job))
            item = _Failed(job, INTERNAL_ERROR)
        self._current = None
        self._encoding.append(job.name)
        # Blocks while the encoder is encode_queue jobs behind: bounded memory.
        self._encode_q.put(item)
        self.publish_status("busy" if self._ready else "idle")

    # -- one job: encoding and filing (encoder thread) ------------------------------------

    def _encode_loop(self) -> None:
        while True:
            item = self._encode_q.get()
            if item is _STOP_ENCODER:
                return
            try:
                self._file(item)
            except Exception:
                # Filing failed (disk full, folder gone): the job stays claimed and is
                # taken up again by recovery at the next start; nothing is lost.
                self.log.exception("could not file job; it stays claimed until restart", job=item.job.name)
                logs.close_job_log(item.job.name)
            finally:
                if item.job.name in self._encoding:
                    self._encoding.remove(item.job.name)

    def _file(self, item: Generated | _Failed) -> None:
        """Encode if there are frames, then move the job to its final folders and tell listeners."""
        job = item.job
        log = self.log.bind(job=job.name)
        if isinstance(item, Generated):
            if self.abort.is_set():
                log.warning("job interrupted by shutdown before encoding; its files go back to the inbox")
                item = _Failed(job, None)
            else:
                try:
                    result = encode_generated(item, self.settings, log)
                except JobError as e:
                    log.warning("job failed", reason=str(e), folder=self._where(self.folders.failed, job))
                    item = _Failed(job, str(e))
                except Exception:
                    log.exception("internal error", folder=self._where(self.folders.failed, job))
                    item = _Failed(job, INTERNAL_ERROR)
                else:
                    log.info(
                        "job done",
                        folder=self._where(self.folders.outputs, job),
                        originals=self._where(self.folders.done, job),
                        recipe_errors=sorted(result.recipe_errors) or None,
                    )
                    logs.close_job_log(job.name)
                    folder = finish_done(self.folders, job)
                    self._finished(result, JobFinished(job.name, "done", folder, result.info, None))
                    return
        log_path = job.out / f"{job.name}.log"
        if item.error is None:
            logs.close_job_log(job.name)
            if not release(self.folders, job):
                log.warning(
                    "could not put the job back in the inbox; it stays claimed and resumes at next start"
                )
            return
        logs.close_job_log(job.name)
        folder = finish_failed(self.folders, job, item.error, log_path)
        error_text = (folder / names.ERROR_FILE).read_text(errors="replace")
        self._finished(
            Result(job, ok=False, error=item.error), JobFinished(job.name, "failed", folder, None, error_text)
        )

    def _where(self, base: Path, job: Job) -> str:
        """Where a job's files go, as people on the share see it (``outputs/team-a/cup_…``)."""
        path = base / job.rel_dir / job.name
        share = self.folders.outputs.parent
        return path.relative_to(share).as_posix() if path.is_relative_to(share) else str(path)

    def _finished(self, result: Result, event: JobFinished) -> None:
        self.results.append(result)
        if self._once is not None:
            self._once.append(result)
        self._tell(lambda listener: listener.on_job_finished(event))
        self.publish_status("busy" if self._current else "idle")
