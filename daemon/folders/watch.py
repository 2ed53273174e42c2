"""Tells the main loop that something in the inbox changed; it never does any work itself.

Events only shorten the wait: the loop's periodic scan is what finds jobs, so a missed
event (inotify queue overflow, a write made by another machine on a network mount,
which inotify never sees) costs at most one poll interval, never a job.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon import logs

# Filesystems whose changes made on other machines never reach inotify.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs"}


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """The type of the filesystem holding ``path``, from the longest matching mount point."""
    target = path.resolve()
    best, fstype = -1, "unknown"
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return fstype
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = Path(fields[4].replace("\\040", " "))
        if (target == mount or mount in target.parents) and len(mount.parts) > best:
            best, fstype = len(mount.parts), right.split()[0]
    return fstype


def watch_mode(path: Path, configured: str) -> str:
    """``inotify`` or ``poll`` for this folder: network and FUSE mounts must be polled."""
    if configured != "auto":
        return configured
    fs = filesystem_type(path)
    return "poll" if fs in NETWORK_FS or fs.startswith("fuse") else "inotify"


# Events that can bring new work. Deletions (our own claims moving files out), opens and
# closes without writing (our own readiness checks and reads) never do: waking on them would
# make every claim trigger another scan, or a busy file trigger an endless scan loop. Nor does a
# folder's own "modified" (its list of names changed): watchdog reports one beside every file
# that comes or goes, and one that comes is reported itself. Waking on it made every claim
# walk the whole inbox again: a backlog of N files cost N walks of N files.
_WAKE_ON = {"created", "modified", "moved", "closed"}


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event, root: str) -> None:
        self.event = event
        self.root = root
        self.lost = threading.Event()  # the watched folder itself went away

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _WAKE_ON and not (event.is_directory and event.event_type == "modified"):
            self.event.set()
        elif event.event_type == "deleted" and os.fsdecode(event.src_path) == self.root:
            self.lost.set()
            self.event.set()  # let the scanner notice now and say so


class Watcher:
    """Sets ``wake`` on inotify events; in ``poll`` mode the loop's own scan is the poll.

    In inotify mode it also re-arms itself when the inbox is deleted and made again, or a
    share is unmounted and mounted again (the old watch then points at nothing), and falls
    back to polling alone when inotify cannot be had (out of watches): events only shorten
    waits, so losing them never loses a job.
    """

    RECHECK_SECONDS = 2.0

    def __init__(self, inbox: Path, wake: threading.Event, mode: str = "auto") -> None:
        self.inbox = inbox
        self.wake = wake
        self.mode = watch_mode(inbox, mode)
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._handler: _Wake | None = None
        self._armed: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._given_up: tuple[int, int] | None = None  # the folder inotify refused to watch
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.log = logs.get()

    @property
    def armed(self) -> bool:
        """Whether inotify events for the current inbox folder are being delivered."""
        return self._observer is not None and self._armed is not None and self._armed == self._identity()

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.inbox)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def start(self) -> None:
        if self.mode != "inotify":
            return
        self._arm()
        self._supervisor = threading.Thread(target=self._supervise, name="i2vd-watch", daemon=True)
        self._supervisor.start()

    def _arm(self) -> None:
        self._disarm()
        identity = self._identity()
        if identity is None:
            return  # no inbox now: the supervisor arms once it is back
        handler = _Wake(self.wake, os.fsdecode(os.path.abspath(self.inbox)))
        observer = Observer()
        observer.daemon = True
        try:
            observer.schedule(handler, str(self.inbox), recursive=True)
            observer.start()
        except OSError as e:
            # Typically ENOSPC: fs.inotify.max_user_watches is used up. Polling still finds
            # every job, one poll interval later.
            self.log.warning("cannot watch the inbox with inotify; polling only", error=str(e))
            with contextlib.suppress(Exception):
                observer.stop()
            self._given_up = identity  # not retried (nor logged) again until the folder changes
            return
        self._observer, self._handler, self._armed = observer, handler, identity

    def _disarm(self) -> None:
        observer, self._observer, self._handler, self._armed = self._observer, None, None, None
        if observer is not None:
            with contextlib.suppress(Exception):
                observer.stop()
                observer.join(timeout=5)

    def _supervise(self) -> None:
        while not self._closing.wait(self.RECHECK_SECONDS):
            lost = self._handler is not None and self._handler.lost.is_set()
            identity = self._identity()
            if identity is not None and (lost or identity not in (self._armed, self._given_up)):
                self._arm()
                if self._observer is not None:
                    self.log.info("watching the inbox again", inbox=str(self.inbox))
                    self.wake.set()

    def stop(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        self._disarm()
