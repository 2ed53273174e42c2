"""The daemon's set-up (folders, lock, ffmpeg and recipes, workers, crash recovery) and tear-down."""

from __future__ import annotations

import gc

from daemon.encode.ffmpeg import FFmpegUnavailable, select_ffmpeg
from daemon.encode.validate import recipe_errors
from daemon.folders import fsops
from daemon.folders.recover import recover
from daemon.folders.trust import Untrusted
from daemon.folders.watch import Watcher
from daemon.listeners import systemd as notify
from daemon.listeners.share_page import SharePage
from daemon.messages import CRASH_LOOP_ERROR
from daemon.prompting.writer import PromptModelError, writer_for
from daemon.service.executor import StoppedWhileStarting, WorkersUnfit
from daemon.service.filing import Failed
from daemon.service.lock import take_lock
from daemon.service.parts import ServiceParts
from daemon.sizing import resolution_to_short_side
from daemon.states import DaemonState


class StartupError(Exception):
    """The daemon cannot work with this configuration (e.g. a recipe ffmpeg rejects)."""


class Lifecycle(ServiceParts):
    """Setting up and tearing down; mixed into ``loop.Service`` (its parts: ``ServiceParts``)."""

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
        # Say at once, in the log and the first status, when the disk is full, the operator has
        # paused (a pause lasts across restarts) or the active hours are closed.
        self._taking()
        self._held()
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
        # Everything loaded so far (torch, diffusers, Ray, the model's Python objects) lives as
        # long as the daemon: moved out of the garbage collector's sight, so that its full
        # collections, run every few hundred jobs' worth of allocations, walk only what jobs make.
        gc.collect()
        gc.freeze()
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
