"""Cancelling jobs: ``i2vd cancel NAME|JOB`` and a share user's ``NAME.cancel`` file.

Two ways in, one way out:

- the operator's request comes through the state folder (``controls``), which only the
  service user and root can write; it names a job as dropped (``cat``, ``team/cat``) or by
  its JOB name;
- a share user writes ``NAME.cancel`` in the inbox folder the image was dropped in. It acts
  only on the job NAME of that same folder (so nobody cancels another folder's job), is
  never followed when it is a link (the scanner takes plain files only), and is removed once
  acted on.

A waiting job is claimed and filed as failed at once; a running one is stopped between two
denoising steps by its executor (also on a Ray worker, through ``stop_job``). Either way its
inputs end in ``failed/JOB/``, byte-identical, with an error.txt saying it was cancelled and
how to run it again. A job still arriving (being copied, or waiting for its prompt file) is
cancelled as soon as it is ready. The loop calls ``step`` every step; with no request
pending it costs one ``stat`` of the requests folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from daemon import logs
from daemon.folders import safe_dirs
from daemon.folders.claim import claim
from daemon.folders.group import Group
from daemon.folders.jobs import Folders, Job
from daemon.folders.names import CANCEL_EXT
from daemon.messages import CANCELLED_ERROR, RERUN_ADVICE
from daemon.service.controls import Controls
from daemon.service.executor import Executor
from daemon.service.filing import Failed, Filer
from daemon.service.flights import Flights
from daemon.service.scanning import InboxMonitor

# A request for a job still arriving waits this long beyond the pair timeout for it to be ready.
_ARRIVING_GRACE = 60.0
_MAX_WANTED = 256
# A NAME.cancel acted on is not acted on again for this long: a scan under way may still list it.
_HANDLED_FOR = 10.0
_FILES_PER_STEP = 64


@dataclass
class _Wanted:
    target: str
    by: str
    until: float  # on the loop's clock
    scan: int = -1  # still arriving at this scan: looked at again after the next one


def _rel(path: Path) -> str:
    return path.as_posix()


class Canceller:
    """Acts on cancel requests; only the loop thread calls it."""

    def __init__(
        self,
        folders: Folders,
        controls: Controls,
        monitor: Callable[[], InboxMonitor],
        flights: Flights,
        executor: Executor,
        filer: Filer,
        *,
        clock: Callable[[], float],
        pair_timeout: Callable[[], float],
        changed: Callable[[], None],
        claimed: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.folders = folders
        self.controls = controls
        self._monitor = monitor
        self.flights = flights
        self.executor = executor
        self.filer = filer
        self.clock = clock
        self._pair_timeout = pair_timeout
        self._changed = changed
        self._claimed = claimed
        self._wanted: list[_Wanted] = []
        self._handled: dict[tuple[str, str], float] = {}
        self._deferred: dict[tuple[str, str], int] = {}  # .cancel of a job still arriving -> scan
        self._stopping: set[str] = set()  # running jobs told to stop, not collected yet
        self.log = logs.get()

    def step(self) -> None:
        now = self.clock()
        for target, by in self.controls.cancels():
            if len(self._wanted) < _MAX_WANTED:
                self._wanted.append(_Wanted(target, by, now + self._pair_timeout() + _ARRIVING_GRACE))
        files = self._monitor().cancel_files
        if not self._wanted and not files:
            return
        self._stopping &= set(self.flights.names())
        scan = self._monitor().last[0]
        self._wanted = [w for w in self._wanted if w.scan == scan or not self._operator(w, now)]
        self._handled = {k: t for k, t in self._handled.items() if now - t < _HANDLED_FOR}
        # Those still arriving are looked at again after the next scan, not every step; and a
        # few at a time, in one pass over the queue: thousands of .cancel files cost no more.
        todo = [k for k in files if k not in self._handled and self._deferred.get(k) != scan]
        if todo:
            self._deferred = {k: v for k, v in self._deferred.items() if v == scan}
            for key in self._share(todo[:_FILES_PER_STEP]):
                self._handled[key] = now

    # -- the operator's requests ------------------------------------------------------------

    def _operator(self, w: _Wanted, now: float) -> bool:
        """Act on one request; True when it is settled (acted on, or nothing to act on)."""
        t = w.target
        how = f"by {w.by} (i2vd cancel)"
        running = [j for j in self.flights.jobs() if t in (j.name, j.stem, _rel(j.rel_dir / j.stem))]

        def picks(g: Group) -> bool:
            return t in (g.name, _rel(g.rel_dir / g.name))

        monitor = self._monitor()
        ready = monitor.withdraw(picks)
        places = {_rel(j.rel_dir) for j in running} | {_rel(g.rel_dir) for g in ready}
        if len(places) > 1:
            self.log.error(
                "i2vd cancel: that name is waiting in several folders; nothing cancelled, name the "
                "folder too (FOLDER/NAME) or give the JOB name",
                target=t,
                folders=sorted(places),
            )
            return True
        if running or ready:
            for job in running:
                self._stop(job, how)
            return all([self._fail_waiting(g, how) for g in ready])
        folder, _, stem = t.rpartition("/")
        if monitor.scanner.has_group(folder or ".", stem) and now < w.until:
            w.scan = monitor.last[0]
            return False  # still arriving: cancelled once it is ready
        self.log.warning("i2vd cancel: no waiting or running job by that name", target=t, by=w.by)
        return True

    # -- a share user's NAME.cancel ---------------------------------------------------------

    def _share(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Act on each ``folder/NAME.cancel`` of ``keys``; returns those acted on (the file
        removed); the others are looked at again later."""
        wanted = set(keys)
        running: dict[tuple[str, str], list[Job]] = {}
        for job in self.flights.jobs():
            if (_rel(job.source), job.stem) in wanted:
                running.setdefault((_rel(job.source), job.stem), []).append(job)
        monitor = self._monitor()
        ready: dict[tuple[str, str], list[Group]] = {}
        for g in monitor.withdraw(lambda g: (_rel(g.source), g.name) in wanted):
            ready.setdefault((_rel(g.source), g.name), []).append(g)
        acted = []
        for key in keys:
            folder, stem = key
            how = f"with the file {stem}{CANCEL_EXT}"
            for job in running.get(key, []):
                self._stop(job, how)
            if not all([self._fail_waiting(g, how) for g in ready.get(key, [])]):
                continue  # its files changed meanwhile: again once they settle
            if key not in running and key not in ready:
                if monitor.scanner.has_group(folder, stem):
                    self._deferred[key] = monitor.last[0]  # still arriving: cancelled once ready
                    continue
                self.log.warning(
                    "a .cancel file names no waiting or running job in its folder; removed",
                    folder=folder,
                    file=f"{stem}{CANCEL_EXT}",
                )
            self._consume(folder, stem)
            acted.append(key)
        return acted

    def _consume(self, folder: str, stem: str) -> None:
        """Remove ``stem.cancel`` from the inbox folder, opened without following links."""
        name = f"{stem}{CANCEL_EXT}"
        try:
            fd = safe_dirs.open_under(self.folders.inbox, Path(folder), create=False)
        except (OSError, safe_dirs.NotAFolder):
            return
        try:
            if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=fd)
        except OSError:
            pass  # gone already, or a link or folder now: not ours to remove
        finally:
            os.close(fd)

    # -- the two outcomes -------------------------------------------------------------------

    def _stop(self, job: Job, how: str) -> None:
        if job.name in self._stopping:
            return
        self._stopping.add(job.name)
        self.log.warning("cancelling a running job; it stops at its next step", job=job.name, how=how)
        self.executor.stop_job(job.name, CANCELLED_ERROR.format(how=how))
        self._changed()

    def _fail_waiting(self, group: Group, how: str) -> bool:
        """Claim a waiting job and file it as failed; False when its files changed meanwhile."""
        job = claim(self.folders, group, datetime.now().astimezone())
        if job is None:
            return False
        self._claimed(job)
        logs.open_job_log(job.name, job.out / f"{job.name}.log")
        self.log.bind(job=job.name).warning("job cancelled before it started", how=how)
        self.filer.put(Failed(job, CANCELLED_ERROR.format(how=how), RERUN_ADVICE))
        self._changed()
        return True
