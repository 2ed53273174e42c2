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

On a local filesystem one more check applies, made by the claim just before it takes a
ready group: no process may hold one of its files open for writing (see ``leases``).

When the inbox itself is gone (a share unmounted, a folder briefly renamed), nothing is
forgotten and nothing becomes ready: ``missing`` turns true and one line is logged, and
one more when it is back.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from daemon import logs
from daemon.folders import names
from daemon.folders.group import Group as Group  # also imported from here
from daemon.folders.group import Signature as Signature
from daemon.folders.group import signature as signature
from daemon.folders.judge import GroupJudge
from daemon.folders.names import split_name as split_name  # also imported from here
from daemon.folders.tracked import UNREAD, TrackedFile, TrackedFolder, is_own
from daemon.folders.watch import DEFAULT_MAX_DEPTH, MAX_FOLDERS, NETWORK_FS, filesystem_type

# A file held open for writing, unchanged, for longer than this is taken anyway: its writer
# is stuck or gone (a crashed SMB client's handle can outlive it by minutes).
BUSY_LIMIT_MIN = 300.0
BUSY_LIMIT_SETTLES = 10
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


class InboxScanner(GroupJudge):
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

        self._root: TrackedFolder | None = None
        self._folders: dict[str, TrackedFolder] = {}
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
            self._root = self._folders["."] = TrackedFolder(".", 0)
        stack: list[tuple[int, Iterator[TrackedFolder]]] = [(root_fd, iter(()))]
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

    def _visit(self, f: TrackedFolder, fd: int, now: float, full: bool) -> None:
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

    def _list(self, f: TrackedFolder, fd: int, now: float) -> None:
        present: set[str] = set()
        subdirs: dict[str, TrackedFolder] = {}
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
        f.find_home()

    def _enter(self, parent: TrackedFolder, name: str) -> TrackedFolder | None:
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
        child = self._folders[rel] = TrackedFolder(rel, depth)
        return child

    def _say_too_deep(self, f: TrackedFolder, refused: bool) -> None:
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

    def _observe(self, f: TrackedFolder, fd: int, name: str, now: float) -> None:
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
        own = names.may_be_own(name) and is_own(fd, name)
        f.files[name] = TrackedFile(st, now, self._scan_no, own)
        if self.settle_seconds > 0:
            f.settling.add(name)
        if own:
            f.own.add(name)
            f.find_home()
        else:
            # One string for the NAME, however many places hold it (a backlog holds many).
            stem = sys.intern(names.group_of(name)[0])
            f.groups.setdefault(stem, []).append(name)
            f.touched.add(stem)
            self._files += 1

    def _drop(self, f: TrackedFolder, name: str) -> None:
        """Forget a file that left (or is no longer a plain file)."""
        old = f.files.pop(name, None)
        f.settling.discard(name)
        if old is None:
            return
        if old.own:
            f.own.discard(name)
            f.find_home()
            return
        stem = names.group_of(name)[0]
        if old.lends not in (None, UNREAD) and f.lent.get(old.lends) == stem:
            del f.lent[old.lends]  # its prompt file changed or left: the image stands alone again
            f.touched.add(names.group_of(old.lends)[0])
        members = f.groups.get(stem, [])
        if name in members:
            members.remove(name)
        if not members:
            f.groups.pop(stem, None)
        f.touched.add(stem)
        self._files -= 1

    def _forget(self, top: TrackedFolder, *, keep: bool) -> None:
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
