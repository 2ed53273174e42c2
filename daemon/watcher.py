"""Tells the main loop that something in the inbox changed; it never does any work itself.

Events only shorten the wait: the loop's periodic scan is what finds jobs, so a missed
event (inotify queue overflow, a write made by another machine on a network mount,
which inotify never sees) costs at most one poll interval, never a job.
"""

from __future__ import annotations

import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

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


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class Watcher:
    """Sets ``wake`` on inotify events; in ``poll`` mode the loop's own scan is the poll."""

    def __init__(self, inbox: Path, wake: threading.Event, mode: str = "auto") -> None:
        self.inbox = inbox
        self.wake = wake
        self.mode = watch_mode(inbox, mode)
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        if self.mode != "inotify":
            return
        observer = Observer()
        observer.schedule(_Wake(self.wake), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
