"""What the scanner keeps per inbox file and per inbox folder between scans (a backlog holds many)."""

from __future__ import annotations

import os

from daemon.folders import names
from daemon.folders.group import Signature

UNREAD = "\0"  # no file is named so: a prompt file whose last_image is not read yet


class TrackedFile:
    """One plain file the scanner keeps track of (a backlog holds many: kept small)."""

    __slots__ = ("checked", "ino", "lends", "mtime", "own", "since", "size")

    def __init__(self, st: os.stat_result, since: float, checked: int, own: bool) -> None:
        self.size, self.mtime, self.ino = st.st_size, st.st_mtime_ns, st.st_ino
        self.since = since  # clock reading when this signature was first observed
        self.checked = checked  # the scan that last looked at it
        self.own = own  # one the daemon wrote beside a failed job (error.txt, JOB.log)
        # A prompt file's ``last_image`` (a file name, or None), read once it has settled.
        self.lends: str | None = UNREAD

    @property
    def sig(self) -> Signature:
        return (self.size, self.mtime, self.ino)

    def same(self, st: os.stat_result) -> bool:
        return self.mtime == st.st_mtime_ns and self.size == st.st_size and self.ino == st.st_ino


class TrackedFolder:
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
        self.files: dict[str, TrackedFile] = {}  # not junk, plain files only
        self.subdirs: dict[str, TrackedFolder] = {}
        self.groups: dict[str, list[str]] = {}  # NAME -> its files (the daemon's own left out)
        self.settling: set[str] = set()  # files looked at every scan until they settle
        self.touched: set[str] = set()  # groups to judge again at this scan
        self.own: set[str] = set()  # the daemon's own files in it
        self.home = rel  # where its jobs are filed: the parent, for a returned job folder
        self.lent: dict[str, str] = {}  # a file a prompt file names as last_image -> that job's NAME

    def find_home(self) -> None:
        """Where this folder's jobs are filed: a folder holding the daemon's own files and named
        like a job is a failed job dragged back, filed where a fresh drop would be."""
        returned = bool(self.own) and self.rel != "." and names.is_job_name(self.name)
        home = (os.path.dirname(self.rel) or ".") if returned else self.rel
        if home != self.home:
            self.home = home
            self.touched.update(self.groups)


def is_own(fd: int, name: str) -> bool:
    """Whether the daemon wrote this file beside a job; read again whenever it changes."""
    head = names.sniff(name, dir_fd=fd) if names.needs_content(name) else None
    return names.own_file_kind(name, head) is not None
