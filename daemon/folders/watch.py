"""Tells the main loop that something in the inbox changed; it never does any work itself.

Events only shorten the wait: the loop's periodic scan is what finds jobs, so a missed
event (inotify queue overflow, a write made by another machine on a network mount,
which inotify never sees) costs at most one poll interval, never a job.

It asks inotify itself, one watch per folder, and only as deep as the scanner looks
(``watch.max_depth``) and for at most ``MAX_FOLDERS`` folders: share users may nest
thousands of folders, and a recursive watcher that follows them all runs out of stack or
of inotify watches (the kernel's limit is per user, for the whole machine).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from daemon import logs

# Filesystems whose changes made on other machines never reach inotify.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs"}
# Inbox folders looked into (and watched) at most: a share user's huge tree costs bounded time.
MAX_FOLDERS = 10_000
DEFAULT_MAX_DEPTH = 8


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


# inotify(7).
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_TO, _IN_CREATE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x80, 0x100, 0x400, 0x800
_IN_UNMOUNT, _IN_Q_OVERFLOW, _IN_IGNORED = 0x2000, 0x4000, 0x8000
_IN_ONLYDIR, _IN_DONT_FOLLOW, _IN_EXCL_UNLINK, _IN_ISDIR = 0x01000000, 0x02000000, 0x04000000, 0x40000000
# Events that can bring new work: a file made, moved in, written and closed, or touched.
# Files leaving (our own claims moving them out) and reads never do: waking on them would
# make every claim trigger another scan. Each write of a long copy is not needed either:
# the close at its end is what matters, and the scan looks at a file still arriving anyway.
_WAKE = _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_ATTRIB
_MASK = _WAKE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR | _IN_DONT_FOLLOW | _IN_EXCL_UNLINK
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _checked(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class _Inotify:
    """One inotify instance watching a folder tree to a fixed depth."""

    def __init__(self, root: bytes, max_depth: int) -> None:
        self.max_depth = max_depth
        self.fd = _checked(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        self.watches: dict[int, tuple[bytes, int, tuple[int, int]]] = {}  # wd -> (path, depth, dev+inode)
        self.lost = False  # the watched folder itself went away
        self.full = False  # MAX_FOLDERS reached or the kernel's watch limit: some folders not watched
        try:
            self.root_wd = self._add(root, 0)
            self.add_tree(root, 0)
        except OSError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def _add(self, path: bytes, depth: int) -> int:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)
        wd = _checked(_libc.inotify_add_watch(self.fd, path, _MASK))
        self.watches[wd] = (path, depth, (st.st_dev, st.st_ino))
        return wd

    def add_tree(self, top: bytes, depth: int) -> None:
        """Watch the folders below ``top`` (itself watched) down to ``max_depth``; a folder made
        and filled before its watch is in place is found by the next scan."""
        stack = [(top, depth)]
        while stack:
            path, level = stack.pop()
            # One level more than max_depth: a failed job's folder dragged back in to retry it.
            if level > self.max_depth:
                continue
            try:
                with os.scandir(path) as it:
                    subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for sub in subdirs:
                if len(self.watches) >= MAX_FOLDERS:
                    self.full = True
                    return
                try:
                    self._add(sub, level + 1)
                except OSError as e:
                    if e.errno == errno.ENOSPC:  # fs.inotify.max_user_watches used up
                        self.full = True
                        return
                    continue  # gone or unreadable meanwhile
                stack.append((sub, level + 1))

    def events(self) -> Iterator[tuple[int, int, bytes]]:
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            at = 0
            while at + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0")
                at += _EVENT.size + length
                yield wd, mask, name

    def handle(self) -> bool:
        """Read what happened; whether it may bring work."""
        wake = False
        for wd, mask, name in self.events():
            if mask & _IN_Q_OVERFLOW:
                # Events were lost, folder creations among them: watch what is there now.
                wake = True
                root = self.watches.get(self.root_wd)
                if root is not None:
                    self.add_tree(root[0], 0)
                continue
            if mask & _IN_IGNORED:
                self.watches.pop(wd, None)
                self.lost |= wd == self.root_wd
                wake |= wd == self.root_wd
                continue
            if wd == self.root_wd and mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT):
                self.lost = True
                wake = True
                continue
            if mask & _IN_MOVE_SELF:
                self._moved(wd)
                continue
            watched = self.watches.get(wd)
            if watched is not None and mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                path, depth, _ = watched
                if depth < self.max_depth + 1 and len(self.watches) < MAX_FOLDERS:
                    sub = os.path.join(path, name)
                    try:
                        self._add(sub, depth + 1)
                        self.add_tree(sub, depth + 1)
                    except OSError:
                        pass  # gone already, or no watches left: the scan finds what is there
            wake |= bool(mask & _WAKE)
        return wake

    def _moved(self, wd: int) -> None:
        """A watched folder moved: where it went inside the tree it was watched again under
        its new name (the same watch); moved out, it and what was under it are let go."""
        watched = self.watches.get(wd)
        if watched is None or self._still_there(wd):
            return
        prefix = watched[0] + b"/"
        for other in [w for w, (p, _, _) in self.watches.items() if w == wd or p.startswith(prefix)]:
            if other == wd or not self._still_there(other):
                _libc.inotify_rm_watch(self.fd, other)
                self.watches.pop(other, None)

    def _still_there(self, wd: int) -> bool:
        path, _, ident = self.watches[wd]
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == ident


class Watcher:
    """Sets ``wake`` on inotify events; in ``poll`` mode the loop's own scan is the poll.

    In inotify mode it also re-arms itself when the inbox is deleted and made again, or a
    share is unmounted and mounted again (the old watch then points at nothing), and falls
    back to polling alone when inotify cannot be had (no instance or watch left): events
    only shorten waits, so losing them never loses a job.
    """

    RECHECK_SECONDS = 2.0

    def __init__(
        self, inbox: Path, wake: threading.Event, mode: str = "auto", max_depth: int = DEFAULT_MAX_DEPTH
    ) -> None:
        self.inbox = inbox
        self.wake = wake
        self.mode = watch_mode(inbox, mode)
        self.max_depth = max_depth
        self._ino: _Inotify | None = None
        self._armed: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._given_up: tuple[int, int] | None = None  # the folder inotify refused to watch
        self._said_full = False
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self.log = logs.get()

    @property
    def armed(self) -> bool:
        """Whether inotify events for the current inbox folder are being delivered."""
        return self._ino is not None and self._armed is not None and self._armed == self._identity()

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
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="i2vd-watch", daemon=True)
        self._thread.start()

    def _arm(self) -> None:
        self._disarm()
        identity = self._identity()
        if identity is None:
            return  # no inbox now: armed again once it is back
        try:
            ino = _Inotify(os.fsencode(os.path.abspath(self.inbox)), self.max_depth)
        except OSError as e:
            # No inotify instance or watch left (fs.inotify.max_user_instances / _watches):
            # polling still finds every job, one poll interval later.
            self.log.warning("cannot watch the inbox with inotify; polling only", error=str(e))
            self._given_up = identity  # not retried (nor logged) again until the folder changes
            return
        self._ino, self._armed = ino, identity
        self._say_full()

    def _say_full(self) -> None:
        if self._ino is not None and self._ino.full and not self._said_full:
            self._said_full = True
            self.log.warning(
                "inotify watches only part of the inbox (too many folders); polling finds the rest"
            )

    def _disarm(self) -> None:
        ino, self._ino, self._armed = self._ino, None, None
        if ino is not None:
            ino.close()

    def _run(self) -> None:
        """Wait for events (waking the loop) or for the next check that the watch is on the
        inbox folder that is there now."""
        next_check = time.monotonic() + self.RECHECK_SECONDS
        try:
            while True:
                # poll, not select: a descriptor numbered above 1023 is fine (a daemon holding a
                # model and its libraries may have that many open).
                poller = select.poll()
                poller.register(self._stop_r, select.POLLIN)
                if self._ino is not None:
                    poller.register(self._ino.fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(self.RECHECK_SECONDS * 1000)]
                if self._stop_r in ready:
                    return
                if self._ino is not None and self._ino.fd in ready:
                    if self._ino.handle():
                        self.wake.set()
                    self._say_full()
                lost = self._ino is not None and self._ino.lost
                if lost or time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.RECHECK_SECONDS
                    self._recheck()
        except Exception:
            # Never fatal: the scan keeps finding jobs without events.
            self.log.exception("the inotify watcher stopped; polling only")
            self._disarm()

    def _recheck(self) -> None:
        lost = self._ino is not None and self._ino.lost
        identity = self._identity()
        if lost and identity is None:
            self._disarm()
        if identity is not None and (lost or identity not in (self._armed, self._given_up)):
            self._arm()
            if self._ino is not None:
                self.log.info("watching the inbox again", inbox=str(self.inbox))
                self.wake.set()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
            os.close(self._stop_r)
            os.close(self._stop_w)
        self._disarm()
