"""What is in the inbox, and which of it is ready to become a job.

A file is *settled* once its size, mtime and inode have stayed the same for
``watch.settle_seconds`` of the daemon's own observation: a copy over SMB or NFS
arrives in chunks, with pauses, sometimes as an empty file filled later, and its mtime
may be the source's (copies preserve it), so only watching it stop changing is safe.
A *group* is every file sharing a folder and a name (``cat.png`` + ``cat.txt``); it is
ready once all its files are settled and it is complete, or incomplete for longer
than ``watch.pair_timeout``.

On a local filesystem (where Samba or the NFS server writes) one more check applies,
made by the claim just before it takes a ready group: no process may hold one of its
files open for writing. The kernel answers that exactly (a read lease is refused while
a writer has the file open), so an upload that stalls for longer than the settle time
while smbd still holds the file is not taken half-written. A writer that keeps a file
open without changing it for ``busy_limit`` is assumed dead, and the file is taken anyway.
On network mounts (the daemon is an SMB or NFS *client*) the kernel cannot know about
writers on other machines, and settling alone decides.

When the inbox itself is gone (a share unmounted, a folder briefly renamed), nothing is
forgotten and nothing becomes ready: ``missing`` turns true and one line is logged, and
one more when it is back.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import os
import re
import signal
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon import logs
from daemon.folders import names
from daemon.folders.watch import NETWORK_FS, filesystem_type
from daemon.job.sidecar import SIDECAR_EXTS

Signature = tuple[int, int, int]  # size, mtime in ns, inode

# A file held open for writing, unchanged, for longer than this is taken anyway: its writer
# is stuck or gone (a crashed SMB client's handle can outlive it by minutes).
BUSY_LIMIT_MIN = 300.0
BUSY_LIMIT_SETTLES = 10
# Waiting groups listed by name (status, share page); a backlog of thousands is counted, not listed.
PENDING_SHOWN = 200


@dataclass
class _Seen:
    sig: Signature
    since: float  # clock reading when this signature was first observed


@dataclass
class Group:
    """One job's worth of inbox files: same folder, same name."""

    rel_dir: Path  # where its results are filed, relative to the inbox ("." for the top)
    name: str
    images: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    since: float = 0.0  # when the last of its files last changed
    # What each file looked like when it was judged settled; the claim re-checks it, so a
    # file rewritten between the scan and the claim is left to settle again.
    sigs: dict[Path, Signature] = field(default_factory=dict)
    # Set by the scanner where the kernel can tell: whether someone still has a file open
    # for writing. The claim asks it just before taking the files.
    held_open: Callable[[Path], bool] | None = None
    # The folder its files are in, relative to the inbox: ``rel_dir`` itself, or a failed job's
    # folder dragged back into it to retry (``inbox/team/cup_20261122_143005``).
    src_dir: Path | None = None
    # The daemon's own files in that returned folder (error.txt, JOB.log): removed, with the
    # emptied folder, once the retried job is claimed.
    leftovers: list[Path] = field(default_factory=list)

    @property
    def source(self) -> Path:
        return self.src_dir if self.src_dir is not None else self.rel_dir

    @property
    def files(self) -> list[Path]:
        return self.images + self.sidecars

    @property
    def complete(self) -> bool:
        return len(self.images) == 1 and len(self.sidecars) == 1


def split_name(filename: str) -> tuple[str, str]:
    """``'my.cat.PNG'`` -> ``('my.cat', '.png')``; the extension is lower-cased for matching."""
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem:
        return filename, ""
    return stem, "." + ext.lower()


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class LeasesUnsupported(Exception):
    """The kernel will not give leases here (not our file and no CAP_LEASE, or a filesystem without)."""


def open_for_writing(path: Path) -> bool | None:
    """Whether another process has ``path`` open for writing; None when this file cannot be opened.

    A read lease is granted only while no one has the file open for writing, and is dropped
    at once by closing. Raises LeasesUnsupported when leases cannot be had at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError:
        return None  # gone, or unreadable: the job itself will say so
    try:
        # Were a writer to open the file in the microseconds we hold the lease, the kernel
        # would signal us: SIGIO by default, which kills the process. SIGURG is ignored.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        raise LeasesUnsupported(e.strerror) from None
    finally:
        os.close(fd)  # closing drops the lease
    return False


class InboxScanner:
    """Tracks inbox files across scans; memory is one small entry per file present."""

    def __init__(
        self,
        inbox: Path,
        *,
        ignore: Iterable[str],
        settle_seconds: float,
        pair_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.inbox = inbox
        self.ignore = tuple(ignore)
        self._ignore_re = re.compile("|".join(fnmatch.translate(p) for p in self.ignore) or "(?!)")
        self.settle_seconds = settle_seconds
        self.pair_timeout = pair_timeout
        self.clock = clock
        self.busy_limit = max(BUSY_LIMIT_MIN, BUSY_LIMIT_SETTLES * settle_seconds)
        self._seen: dict[tuple[str, str], _Seen] = {}  # (folder relative to the inbox, name)
        self.waiting = 0  # files present but not yet part of a ready group
        # Seconds until the first waiting group is due, if nothing changes meanwhile (None:
        # nothing waiting). A loop can sleep exactly that long instead of a whole poll interval.
        self.next_ready_in: float | None = None
        self.missing = False  # the inbox folder itself cannot be read (share unmounted?)
        self.missing_reason = ""
        self._lease_check: bool | None = None  # decided at the first scan that sees the inbox
        # Groups not ready yet, oldest first, as (name, what it waits for): shown to people
        # (status, share page) so a file dropped during a long job is seen to be noticed.
        self.pending: list[tuple[str, str]] = []
        # Returned job folders (relative to the inbox) -> the daemon's own files in them.
        self._returned: dict[str, list[Path]] = {}
        # Whether a file that might be the daemon's is, by (folder, name): (signature, answer).
        self._own_cache: dict[tuple[str, str], tuple[Signature, bool]] = {}
        self._own_seen: dict[tuple[str, str], tuple[Signature, bool]] = {}
        self.log = logs.get()

    def ignored(self, filename: str) -> bool:
        return self._ignore_re.match(filename) is not None

    def _walk(self, folder: str, rel: str, home: str) -> Iterator[tuple[str, str, str, os.stat_result]]:
        """(folder relative to the inbox, where its jobs are filed, name, lstat) of every plain
        file that may be part of a job, depth first.

        Plain strings, not Paths: this runs over the whole inbox every poll interval, and a
        backlog of thousands must not make it slow. The daemon's own files (a failed job's
        error.txt and log, dragged back with its folder) are left out; a folder holding them
        is a returned job folder, whose jobs are filed where a fresh drop would be.
        """
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            # A subfolder removed while we look, or unreadable: its files wait for the next scan.
            return
        files: list[tuple[str, os.stat_result]] = []
        own: list[str] = []
        for entry in entries:
            if self.ignored(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                sub = entry.name if rel == "." else f"{rel}/{entry.name}"
                yield from self._walk(entry.path, sub, sub)
            elif stat.S_ISREG(st.st_mode):
                # Symlinks, FIFOs and devices are never jobs: a link could point anywhere
                # and opening a FIFO blocks.
                if self._is_own(entry.path, rel, entry.name, st):
                    own.append(entry.name)
                else:
                    files.append((entry.name, st))
        if own and rel != "." and names.is_job_name(os.path.basename(folder)):
            home = os.path.dirname(rel) or "."
            self._returned[rel] = [Path(folder, n) for n in own]
        for name, st in files:
            yield rel, home, name, st

    def _is_own(self, path: str, rel: str, name: str, st: os.stat_result) -> bool:
        """Whether the daemon wrote this file beside a job; content is read once per version."""
        if not (name == names.ERROR_FILE or name.endswith((".log", ".json", ".txt"))):
            return False
        if not names.needs_content(name):
            return names.own_file_kind(name, None) is not None
        sig = signature(st)
        cached = self._own_cache.get((rel, name))
        if cached is None or cached[0] != sig:
            cached = (sig, names.own_file_kind(name, names.sniff(path)) is not None)
        self._own_seen[(rel, name)] = cached
        return cached[1]

    def _check_inbox(self) -> bool:
        """Whether the inbox folder is there; logs once when it goes and once when it is back."""
        try:
            st = os.stat(self.inbox)
            ok = stat.S_ISDIR(st.st_mode) and os.access(self.inbox, os.R_OK | os.X_OK)
            reason = "" if ok else "not a readable folder"
        except OSError as e:
            ok, reason = False, e.strerror or str(e)
        if not ok and not self.missing:
            self.log.warning(
                "inbox missing; waiting for it to come back (is the share mounted?)",
                inbox=str(self.inbox),
                reason=reason,
            )
        elif ok and self.missing:
            self.log.info("inbox is back; carrying on", inbox=str(self.inbox))
        self.missing, self.missing_reason = not ok, reason
        return ok

    def scan(self) -> list[Group]:
        """Observe the inbox once; return the groups ready now, oldest first."""
        now = self.clock()
        if not self._check_inbox():
            # Remember what was there: a share that comes back unchanged needs no new wait,
            # and a changed file is seen as changed by its signature.
            self.waiting = len(self._seen)
            return []
        if self._lease_check is None:
            fs = filesystem_type(self.inbox)
            self._lease_check = fs not in NETWORK_FS and not fs.startswith("fuse")
        present: dict[tuple[str, str], _Seen] = {}
        self._returned = {}
        self._own_seen = {}
        # (folder relative to the inbox, NAME) -> (where it is filed, [(file name, seen)])
        by_group: dict[tuple[str, str], tuple[str, list[tuple[str, _Seen]]]] = {}
        for rel, home, name, st in self._walk(os.fspath(self.inbox), ".", "."):
            sig = signature(st)
            old = self._seen.get((rel, name))
            seen = old if old is not None and old.sig == sig else _Seen(sig, now)
            present[(rel, name)] = seen
            by_group.setdefault((rel, split_name(name)[0]), (home, []))[1].append((name, seen))
        # Forget files that left, so a backlog that drains leaves nothing behind.
        self._seen = present
        self._own_cache = self._own_seen

        ready = []
        pending: list[tuple[float, str, str]] = []
        self.waiting = 0
        self.next_ready_in = None
        for (rel, stem), (home, members) in by_group.items():
            since = max(seen.since for _, seen in members)
            quiet_for = now - since
            sidecars = sum(1 for name, _ in members if split_name(name)[1] in SIDECAR_EXTS)
            images = len(members) - sidecars
            complete = images == 1 and sidecars == 1
            # Two sidecars or two images for one name can never become a valid pair by waiting.
            clash = images > 1 or sidecars > 1
            if quiet_for >= self.settle_seconds and (complete or clash or quiet_for >= self.pair_timeout):
                ready.append(self._group(rel, home, stem, members, since, quiet_for))
            else:
                self.waiting += len(members)
                due = (self.settle_seconds if complete or clash else self.pair_timeout) - quiet_for
                if self.next_ready_in is None or due < self.next_ready_in:
                    self.next_ready_in = max(0.0, due)
                if len(pending) < PENDING_SHOWN:
                    if quiet_for < self.settle_seconds:
                        state = "arriving"
                    else:
                        state = "waiting for its prompt file" if sidecars == 0 else "waiting for its image"
                    shown = stem if home == "." else f"{home}/{stem}"
                    pending.append((since, shown, state))
        ready.sort(key=lambda g: (g.since, str(g.rel_dir), g.name))
        pending.sort()
        self.pending = [(name, state) for _, name, state in pending]
        return ready

    def _group(
        self, rel: str, home: str, stem: str, members: list[tuple[str, _Seen]], since: float, quiet_for: float
    ) -> Group:
        folder = self.inbox / rel
        g = Group(Path(home), stem, since=since)
        if rel != home:
            g.src_dir = Path(rel)
            g.leftovers = list(self._returned.get(rel, []))
        for name, seen in sorted(members):
            path = folder / name
            (g.sidecars if split_name(name)[1] in SIDECAR_EXTS else g.images).append(path)
            g.sigs[path] = seen.sig
        if self._lease_check and quiet_for < self.busy_limit:
            g.held_open = self.held_open
        return g

    def held_open(self, path: Path) -> bool:
        """Whether another process has ``path`` open for writing (checked by the claim, just
        before it moves the file); False when the kernel cannot tell us here."""
        if not self._lease_check:
            return False
        try:
            return open_for_writing(path) is True
        except LeasesUnsupported as e:
            # Settling alone decides from now on, as on a network mount.
            self._lease_check = False
            self.log.info(
                "cannot ask the kernel whether inbox files are still being written; "
                "relying on settle_seconds alone",
                inbox=str(self.inbox),
                reason=str(e),
            )
            return False
