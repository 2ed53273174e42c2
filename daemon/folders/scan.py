"""What is in the inbox, and which of it is ready to become a job.

A file is *settled* once its size, mtime and inode have stayed the same for
``watch.settle_seconds`` of the daemon's own observation: a copy over SMB or NFS
arrives in chunks, with pauses, sometimes as an empty file filled later, and its mtime
may be the source's (copies preserve it), so only watching it stop changing is safe.
A *group* is every file sharing a folder and a name (``cat.png`` + ``cat.txt``, and
companions such as ``cat.xmp``: see ``names``); it is ready once all its files are
settled and it is complete, or incomplete for longer than ``watch.pair_timeout``. A job's
last frame is one of its files: ``NAME.last.EXT`` (``names.last_frame_of``), or the image its
``.toml``/``.json`` prompt file names as ``last_image``, which the job waits for (read once the
prompt file has settled; only ever looked up among the folder's own plain files).

The scanner keeps a view of the inbox and brings it up to date each scan rather than
reading everything again, so an inbox full of junk or of files waiting for a partner costs
next to nothing while nothing changes:

- a folder is listed again only when its own mtime or inode changed (a file added, removed
  or renamed in it), or its mtime is too recent to trust (a coarse filesystem clock may not
  show a second change within the same tick);
- ignored names (junk) are skipped while listing and nothing is kept for them;
- only files still settling are looked at every scan. A settled file is looked at again
  before its group is taken (so a file rewritten in place settles again), every scan while
  its group is at the front of the ready queue, and when the inbox comes back after going
  missing;
- every ``FULL_RESCAN_SECONDS`` each folder is listed whatever its time says (network mounts
  may cache folder times);
- folders deeper than ``watch.max_depth`` are not looked into, and said once in the log.

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
import heapq
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon import logs
from daemon.folders import names
from daemon.folders.names import split_name as split_name  # also imported from here
from daemon.folders.watch import DEFAULT_MAX_DEPTH, MAX_FOLDERS, NETWORK_FS, filesystem_type

Signature = tuple[int, int, int]  # size, mtime in ns, inode

# A file held open for writing, unchanged, for longer than this is taken anyway: its writer
# is stuck or gone (a crashed SMB client's handle can outlive it by minutes).
BUSY_LIMIT_MIN = 300.0
BUSY_LIMIT_SETTLES = 10
# Waiting groups listed by name (status, share page); a backlog of thousands is counted, not listed.
PENDING_SHOWN = 200
# Every folder listed, whatever its time says, this often.
FULL_RESCAN_SECONDS = 30.0
# A folder changed this recently (by the wall clock) may change again within the same tick of
# a coarse filesystem clock (FAT: 2 s) without its mtime moving: it is listed again next scan.
RACY_NS = 2_000_000_000
# Ready groups at the front of the queue, looked at again every scan: the next to be claimed.
RECHECK_READY = 64
# The longest folder path looked into (bytes, relative to the inbox): folders mirrored under
# outputs/, done/ and failed/ keep every path well within PATH_MAX.
MAX_REL_BYTES = 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_UNREAD = "\0"  # no file is named so: a prompt file whose last_image is not read yet
_WAITING_FOR_LAST = "waiting for its last image"
_WAITING_FOR = {True: "waiting for its image", False: "waiting for its prompt file"}


@dataclass
class Group:
    """One job's worth of inbox files: same folder, same name."""

    rel_dir: Path  # where its results are filed, relative to the inbox ("." for the top)
    name: str
    images: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    # Files that go with the job, untouched and never read (a RAW file, an .xmp): see ``names``.
    companions: list[Path] = field(default_factory=list)
    # The frame the clip ends on: ``NAME.last.EXT`` beside the image (see ``names.last_frame_of``).
    lasts: list[Path] = field(default_factory=list)
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
        return self.images + self.sidecars + self.companions + self.lasts

    @property
    def complete(self) -> bool:
        return len(self.images) == 1 and len(self.sidecars) == 1


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


def _same(a: Group, b: Group) -> bool:
    return (a.since, a.sigs, a.src_dir, a.leftovers) == (b.since, b.sigs, b.src_dir, b.leftovers)


class _File:
    """One plain file the scanner keeps track of (a backlog holds many: kept small)."""

    __slots__ = ("checked", "ino", "lends", "mtime", "own", "since", "size")

    def __init__(self, st: os.stat_result, since: float, checked: int, own: bool) -> None:
        self.size, self.mtime, self.ino = st.st_size, st.st_mtime_ns, st.st_ino
        self.since = since  # clock reading when this signature was first observed
        self.checked = checked  # the scan that last looked at it
        self.own = own  # one the daemon wrote beside a failed job (error.txt, JOB.log)
        # A prompt file's ``last_image`` (a file name, or None), read once it has settled.
        self.lends: str | None = _UNREAD

    @property
    def sig(self) -> Signature:
        return (self.size, self.mtime, self.ino)

    def same(self, st: os.stat_result) -> bool:
        return self.mtime == st.st_mtime_ns and self.size == st.st_size and self.ino == st.st_ino


class _Folder:
    """What the scanner knows of one inbox folder, as of its last listing."""

    __slots__ = (
        "depth",
        "files",
        "groups",
        "home",
        "ident",
        "lent",
        "name",
        "own",
        "racy",
        "rel",
        "settling",
        "subdirs",
        "touched",
    )

    def __init__(self, rel: str, depth: int) -> None:
        self.rel = rel  # relative to the inbox, "/"-separated; "." for the inbox itself
        self.name = os.path.basename(rel)
        self.depth = depth
        self.ident: tuple[int, int] | None = None  # (mtime_ns, inode) when last listed
        self.racy = True
        self.files: dict[str, _File] = {}  # not junk, plain files only
        self.subdirs: dict[str, _Folder] = {}
        self.groups: dict[str, list[str]] = {}  # NAME -> its files (the daemon's own left out)
        self.settling: set[str] = set()  # files looked at every scan until they settle
        self.touched: set[str] = set()  # groups to judge again at this scan
        self.own: set[str] = set()  # the daemon's own files in it
        self.home = rel  # where its jobs are filed: the parent, for a returned job folder
        self.lent: dict[str, str] = {}  # a file a prompt file names as last_image -> that job's NAME


class InboxScanner:
    """Tracks inbox files across scans; memory is one small entry per file that may be part of a job."""

    def __init__(
        self,
        inbox: Path,
        *,
        ignore: Iterable[str],
        settle_seconds: float,
        pair_timeout: float,
        clock: Callable[[], float],
        max_depth: int = DEFAULT_MAX_DEPTH,
        alone_timeout: float | None = None,
    ) -> None:
        self.inbox = inbox
        self.ignore = tuple(ignore)
        self._ignore_re = re.compile("|".join(fnmatch.translate(p) for p in self.ignore) or "(?!)")
        self.settle_seconds = settle_seconds
        self.pair_timeout = pair_timeout
        # An image alone is ready after this long, not pair_timeout ([prompting] wait_seconds:
        # the prompt model writes its prompt); None: pair_timeout.
        self.alone_timeout = alone_timeout
        self.clock = clock
        self.max_depth = max_depth
        self.busy_limit = max(BUSY_LIMIT_MIN, BUSY_LIMIT_SETTLES * settle_seconds)
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
        self.log = logs.get()

        self._root: _Folder | None = None
        self._folders: dict[str, _Folder] = {}
        self._scan_no = 0
        self._next_full = float("-inf")
        self._restat = False  # look at every file at the next listing, not only new ones
        self._files = 0  # files tracked that may be part of a job
        # (folder, NAME) -> the group, ready; and the ready groups in claim order (None: to sort)
        self._ready: dict[tuple[str, str], Group] = {}
        self._ready_sorted: list[Group] | None = []
        # (folder, NAME) -> (since, due, files, what it waits for), not ready yet
        self._waiting: dict[tuple[str, str], tuple[float, float, int, str]] = {}
        self._waiting_files = 0
        self._due: list[tuple[float, str, str]] = []  # (due, folder, NAME), stale entries skipped
        self._pending_stale = False
        self._too_deep: set[str] = set()  # folders with subfolders not looked into
        self._too_many = False
        # folder -> the NAMEs its ``NAME.cancel`` files ask to cancel (plain files only)
        self._cancels: dict[str, frozenset[str]] = {}

    def ignored(self, filename: str) -> bool:
        return self._ignore_re.match(filename) is not None

    @property
    def tracked(self) -> int:
        """Files held in memory (none for junk)."""
        return sum(len(f.files) for f in self._folders.values())

    def cancel_files(self) -> list[tuple[str, str]]:
        """(folder, NAME) of every ``NAME.cancel`` file seen, folders relative to the inbox."""
        return [(rel, stem) for rel, stems in self._cancels.items() for stem in stems]

    def waiting_folders(self) -> set[str]:
        """The folders (relative to the inbox) holding groups seen but not ready yet."""
        return {rel for rel, _ in self._waiting}

    def has_group(self, rel: str, stem: str) -> bool:
        """Whether the folder ``rel`` holds files of the group NAME (ready, waiting or incomplete)."""
        f = self._folders.get(rel)
        return f is not None and stem in f.groups

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
            self._next_full = float("-inf")  # whatever came back, look at all of it
            self._restat = True
        self.missing, self.missing_reason = not ok, reason
        return ok

    def scan(self) -> list[Group]:
        """Observe the inbox once; return the groups ready now, oldest first."""
        now = self.clock()
        if not self._check_inbox():
            # Remember what was there: a share that comes back unchanged needs no new wait,
            # and a changed file is seen as changed by its signature.
            self.waiting = self._files
            return []
        if self._lease_check is None:
            fs = filesystem_type(self.inbox)
            self._lease_check = fs not in NETWORK_FS and not fs.startswith("fuse")
        self._scan_no += 1
        full = now >= self._next_full
        if full:
            self._next_full = now + FULL_RESCAN_SECONDS
        self._touch_due(now)
        for g in self._claim_order()[:RECHECK_READY]:
            folder = self._folders.get(g.source.as_posix())
            if folder is not None:
                folder.touched.add(g.name)
        self._walk(now, full)
        self._restat = False
        self._sum_up(now)
        return list(self._claim_order())

    # -- the walk ---------------------------------------------------------------------------

    def _walk(self, now: float, full: bool) -> None:
        """Visit every known folder, parents first, each opened from its parent's descriptor.

        Iterative (a share user can nest folders deeper than Python recurses), and by
        descriptor: a folder swapped for a symlink is refused, never followed out of the inbox.
        """
        try:
            root_fd = os.open(self.inbox, _DIR_FLAGS)
        except OSError:
            return  # gone since the check: the next scan says so
        if self._root is None:
            self._root = self._folders["."] = _Folder(".", 0)
        stack: list[tuple[int, Iterator[_Folder]]] = [(root_fd, iter(()))]
        try:
            self._visit(self._root, root_fd, now, full)
            stack[-1] = (root_fd, iter(list(self._root.subdirs.values())))
            while stack:
                fd, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    os.close(fd)
                    continue
                try:
                    child_fd = os.open(child.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    # Gone, unreadable or now a link: what it held is forgotten; tried again next
                    # scan for as long as its parent lists it.
                    self._forget(child, keep=True)
                    continue
                stack.append((child_fd, iter(())))
                self._visit(child, child_fd, now, full)
                stack[-1] = (child_fd, iter(list(child.subdirs.values())))
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _visit(self, f: _Folder, fd: int, now: float, full: bool) -> None:
        """Bring one folder up to date: list it if it changed, look at what is settling, judge
        the groups whose files changed or whose time came."""
        st = os.fstat(fd)
        ident = (st.st_mtime_ns, st.st_ino)
        if full or f.racy or ident != f.ident:
            # Its time is taken before listing: a change made while listing shows next scan.
            f.ident = ident
            f.racy = time.time_ns() - st.st_mtime_ns < RACY_NS
            self._list(f, fd, now)
        for name in [n for n in f.settling if f.files[n].checked != self._scan_no]:
            self._observe(f, fd, name, now)
        while f.touched:
            self._judge(f, fd, f.touched.pop(), now)

    def _list(self, f: _Folder, fd: int, now: float) -> None:
        present: set[str] = set()
        subdirs: dict[str, _Folder] = {}
        cancels: set[str] = set()
        refused = False
        with os.scandir(fd) as it:
            for entry in it:
                name = entry.name
                if self._ignore_re.match(name) is not None:
                    continue  # junk: nothing is kept for it
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = not is_dir and entry.is_file(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    child = f.subdirs.get(name) or self._enter(f, name)
                    if child is None:
                        refused = True
                    else:
                        subdirs[name] = child
                elif is_file and (cancel := names.cancel_stem(name)) is not None:
                    cancels.add(cancel)  # a request, not an input (a link is never one)
                elif is_file:
                    # Symlinks, FIFOs and devices are never jobs: a link could point anywhere
                    # and opening a FIFO blocks.
                    present.add(name)
                    old = f.files.get(name)
                    if old is None or self._restat or entry.inode() != old.ino:
                        self._observe(f, fd, name, now)
        for name in [n for n in f.files if n not in present]:
            self._drop(f, name)
        for name, child in f.subdirs.items():
            if name not in subdirs:
                self._forget(child, keep=False)
        f.subdirs = subdirs
        if cancels:
            self._cancels[f.rel] = frozenset(cancels)
        else:
            self._cancels.pop(f.rel, None)
        self._say_too_deep(f, refused)
        self._find_home(f)

    def _enter(self, parent: _Folder, name: str) -> _Folder | None:
        """A new subfolder to look into; None when it is too deep, its path too long, or too many."""
        rel = name if parent.rel == "." else f"{parent.rel}/{name}"
        depth = parent.depth + 1
        # One level more for a failed job's folder dragged back in to retry it.
        too_deep = depth > self.max_depth and not (depth == self.max_depth + 1 and names.is_job_name(name))
        if too_deep or parent.depth > self.max_depth or len(os.fsencode(rel)) > MAX_REL_BYTES:
            return None
        if len(self._folders) >= MAX_FOLDERS:
            if not self._too_many:
                self._too_many = True
                self.log.warning(
                    f"more than {MAX_FOLDERS} folders in the inbox; the others are not looked into "
                    "until some are removed",
                    folder=rel,
                )
            return None
        child = self._folders[rel] = _Folder(rel, depth)
        return child

    def _say_too_deep(self, f: _Folder, refused: bool) -> None:
        """Log, once until it is gone, that some folder holds subfolders nested too deep."""
        if refused and f.rel not in self._too_deep:
            if not self._too_deep:
                self.log.warning(
                    f"folders nested more than {self.max_depth} levels deep in the inbox (or with "
                    f"paths longer than {MAX_REL_BYTES} bytes) are not looked into; move their files "
                    "higher up",
                    folder=f.rel,
                )
            self._too_deep.add(f.rel)
        elif not refused:
            self._too_deep.discard(f.rel)

    def _observe(self, f: _Folder, fd: int, name: str, now: float) -> None:
        """Look at one file; a new or changed one starts to settle from now."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        old = f.files.get(name)
        if st is None or not stat.S_ISREG(st.st_mode):
            if old is not None:
                self._drop(f, name)
            return
        if old is not None and old.same(st):
            old.checked = self._scan_no
            if name in f.settling and now - old.since >= self.settle_seconds:
                f.settling.discard(name)
                if not f.settling:
                    f.settling = set()  # a set keeps its size: let a big one go
                if not old.own:
                    f.touched.add(names.group_of(name)[0])
            return
        if old is not None:
            self._drop(f, name)
        own = names.may_be_own(name) and self._is_own(fd, name)
        f.files[name] = _File(st, now, self._scan_no, own)
        if self.settle_seconds > 0:
            f.settling.add(name)
        if own:
            f.own.add(name)
            self._find_home(f)
        else:
            # One string for the NAME, however many places hold it (a backlog holds many).
            stem = sys.intern(names.group_of(name)[0])
            f.groups.setdefault(stem, []).append(name)
            f.touched.add(stem)
            self._files += 1

    def _drop(self, f: _Folder, name: str) -> None:
        """Forget a file that left (or is no longer a plain file)."""
        old = f.files.pop(name, None)
        f.settling.discard(name)
        if old is None:
            return
        if old.own:
            f.own.discard(name)
            self._find_home(f)
            return
        stem = names.group_of(name)[0]
        if old.lends not in (None, _UNREAD) and f.lent.get(old.lends) == stem:
            del f.lent[old.lends]  # its prompt file changed or left: the image stands alone again
            f.touched.add(names.group_of(old.lends)[0])
        members = f.groups.get(stem, [])
        if name in members:
            members.remove(name)
        if not members:
            f.groups.pop(stem, None)
        f.touched.add(stem)
        self._files -= 1

    def _forget(self, top: _Folder, *, keep: bool) -> None:
        """Forget a folder and everything under it (gone, unreadable, or a link now); ``keep``
        leaves the folder itself known, empty, so it is tried again next scan."""
        stack = [top]
        while stack:
            f = stack.pop()
            stack.extend(f.subdirs.values())
            for stem in f.groups:
                if self._unlist((f.rel, stem)) is not None:
                    self._ready_sorted = None
            self._files -= sum(1 for file in f.files.values() if not file.own)
            f.files, f.subdirs, f.groups, f.own, f.lent = {}, {}, {}, set(), {}
            f.settling, f.touched = set(), set()
            f.ident, f.home = None, f.rel
            self._too_deep.discard(f.rel)
            self._cancels.pop(f.rel, None)
            if f is not top or not keep:
                self._folders.pop(f.rel, None)

    def _is_own(self, fd: int, name: str) -> bool:
        """Whether the daemon wrote this file beside a job; read again whenever it changes."""
        head = names.sniff(name, dir_fd=fd) if names.needs_content(name) else None
        return names.own_file_kind(name, head) is not None

    def _find_home(self, f: _Folder) -> None:
        """Where a folder's jobs are filed: a folder holding the daemon's own files and named
        like a job is a failed job dragged back, filed where a fresh drop would be."""
        returned = bool(f.own) and f.rel != "." and names.is_job_name(f.name)
        home = (os.path.dirname(f.rel) or ".") if returned else f.rel
        if home != f.home:
            f.home = home
            f.touched.update(f.groups)

    # -- judging groups -------------------------------------------------------------------

    def _judge(self, f: _Folder, fd: int, stem: str, now: float) -> None:
        """Decide whether one group is ready, waiting, or no job at all (companions alone).

        A group about to be ready has each of its files looked at once more in this scan,
        so a settled file rewritten in place since is seen, and settles again.
        """
        key = (f.rel, stem)
        queued = self._waiting.get(key, (0.0, now, 0, ""))[1]  # a due-list entry stands for it then
        was = self._unlist(key)
        lead = names.last_frame_of(stem)
        if lead is None or not self._lasts(f, lead):
            lead = self._lender(f, stem)
        if lead is not None:
            # NAME.last.EXT beside job NAME, or an image NAME's prompt file names as its last_image:
            # judged with NAME's files, never a job of its own.
            f.touched.add(lead)
            if was is not None:
                self._ready_sorted = None
            return
        if stem + names.LAST_MARK in f.groups and not self._lasts(f, stem):
            # NAME is gone or no job now: STEM.last.EXT is judged on its own again.
            f.touched.add(stem + names.LAST_MARK)
        while members := f.groups.get(stem):
            images, prompts, companions = names.sort_inputs(members)
            if not images and not prompts:
                break  # companions alone are no job: they wait for their photo, and never fail
            lasts = self._lasts(f, stem)
            if lasts:
                self._unlist((f.rel, stem + names.LAST_MARK))  # was waiting on its own, before NAME came
            named = self._named_last(f, fd, stem, prompts)
            missing_last = named is not None and self._lender(f, names.group_of(named)[0]) != stem
            if named is not None and not missing_last and named not in lasts:
                lasts = [*lasts, named]
            members = members + lasts
            since = max(f.files[n].since for n in members)
            quiet = now - since
            complete = len(images) == 1 and len(prompts) == 1 and not missing_last
            clash = len(images) > 1 or len(prompts) > 1  # can never become a valid pair by waiting
            timeout = self.pair_timeout
            if self.alone_timeout is not None and images and not prompts:
                timeout = self.alone_timeout
            if quiet >= self.settle_seconds and (complete or clash or quiet >= timeout):
                stale = [n for n in members if f.files[n].checked != self._scan_no]
                if stale:
                    for name in stale:
                        self._observe(f, fd, name, now)
                    f.touched.discard(stem)
                    continue
                g = self._group(f, stem, images, prompts, companions, since, lasts)
                if was is not None and _same(was, g):
                    g = was  # unchanged: its place in the queue stands, nothing is sorted again
                self._ready[key] = g
                if g is not was:
                    self._ready_sorted = None
                return
            due = since + (self.settle_seconds if complete or clash else timeout)
            state = "arriving" if quiet < self.settle_seconds else _WAITING_FOR[bool(prompts)]
            if missing_last and images and state != "arriving":
                state = _WAITING_FOR_LAST
            self._waiting[key] = (since, due, len(members), state)
            self._waiting_files += len(members)
            self._pending_stale = True
            if due != queued:
                heapq.heappush(self._due, (due, f.rel, stem))
            break
        if was is not None:
            self._ready_sorted = None  # it left the ready list

    def _lasts(self, f: _Folder, stem: str) -> list[str]:
        """The images ``STEM.last.EXT`` that go with job STEM's files (see ``names.lends_last_frame``)."""
        last = f.groups.get(stem + names.LAST_MARK)
        if not last or not names.lends_last_frame(f.groups.get(stem, ()), last):
            return []
        return sorted(last)

    def _named_last(self, f: _Folder, fd: int, stem: str, prompts: list[str]) -> str | None:
        """The file job STEM's ``.toml``/``.json`` prompt file names as ``last_image``, or None.

        Read once the prompt file has settled (and again only when it changes); the image named
        is then judged with this job (``_lender``) and waited for, up to ``pair_timeout``.
        """
        if len(prompts) != 1:
            return None
        file = f.files[prompts[0]]
        if file.lends == _UNREAD:
            if prompts[0] in f.settling or names.split_name(prompts[0])[1] not in (".toml", ".json"):
                return None
            file.lends = names.named_last_image(prompts[0], names.sniff(prompts[0], dir_fd=fd))
            if file.lends is not None and file.lends not in f.groups.get(stem, ()):
                f.lent[file.lends] = stem
                f.touched.add(names.group_of(file.lends)[0])
        return file.lends if file.lends not in f.groups.get(stem, ()) else None

    def _lender(self, f: _Folder, stem: str) -> str | None:
        """The job whose prompt file names this group's one image as its ``last_image``; None when
        there is none, or the group holds more (with a prompt file of its own it is a job of its own)."""
        members = f.groups.get(stem)
        if not members or len(members) != 1:
            return None
        lender = f.lent.get(members[0])
        return lender if lender is not None and lender != stem and f.groups.get(lender) else None

    def _unlist(self, key: tuple[str, str]) -> Group | None:
        """Take a group off the ready and waiting lists; returns it if it was ready (the
        caller re-sorts the ready list, or puts it back unchanged)."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            self._waiting_files -= waiting[2]
            self._pending_stale = True
        return self._ready.pop(key, None)

    def _current(self, entry: tuple[float, str, str]) -> bool:
        """Whether a due-list entry still stands for its group (it is waiting, due then)."""
        waiting = self._waiting.get(entry[1:])
        return waiting is not None and waiting[1] == entry[0]

    def _touch_due(self, now: float) -> None:
        """Mark for judging every waiting group whose time has come."""
        while self._due and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            if self._current(entry) and entry[1] in self._folders:
                self._folders[entry[1]].touched.add(entry[2])

    def _claim_order(self) -> list[Group]:
        if self._ready_sorted is None:
            self._ready_sorted = sorted(self._ready.values(), key=lambda g: (g.since, str(g.rel_dir), g.name))
        return self._ready_sorted

    def _sum_up(self, now: float) -> None:
        """What waits: how many files, what is shown to people, when the next group is due."""
        due = self._due
        while due and not self._current(due[0]):
            heapq.heappop(due)  # judged again since: a newer entry stands for it
        if len(due) > 2 * len(self._waiting) + 64:
            self._due = due = [(w[1], rel, stem) for (rel, stem), w in self._waiting.items()]
            heapq.heapify(due)
        self.next_ready_in = max(0.0, due[0][0] - now) if due else None
        self.waiting = self._waiting_files
        if self._pending_stale:
            self._pending_stale = False
            oldest = heapq.nsmallest(PENDING_SHOWN, ((w[0], key) for key, w in self._waiting.items()))
            self.pending = [(self._shown(key), self._waiting[key][3]) for _, key in oldest]

    def _shown(self, key: tuple[str, str]) -> str:
        """A waiting group's name as people know it: where its job will be filed, and its NAME."""
        rel, stem = key
        home = self._folders[rel].home if rel in self._folders else rel
        return stem if home == "." else f"{home}/{stem}"

    def _group(
        self,
        f: _Folder,
        stem: str,
        images: list[str],
        prompts: list[str],
        companions: list[str],
        since: float,
        lasts: list[str],
    ) -> Group:
        folder = self.inbox / f.rel
        g = Group(Path(f.home), stem, since=since)
        if f.home != f.rel:
            g.src_dir = Path(f.rel)
            g.leftovers = [folder / n for n in sorted(f.own)]
        g.images = [folder / n for n in images]
        g.sidecars = [folder / n for n in prompts]
        g.companions = [folder / n for n in companions]
        g.lasts = [folder / n for n in lasts]
        g.sigs = {folder / n: f.files[n].sig for n in (*images, *prompts, *companions, *lasts)}
        if self._lease_check:
            g.held_open = self._held_open_since(since)
        return g

    def _held_open_since(self, since: float) -> Callable[[Path], bool]:
        def held_open(path: Path) -> bool:
            # Unchanged for busy_limit while held open: its writer is stuck or gone.
            return self.clock() - since < self.busy_limit and self.held_open(path)

        return held_open

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
