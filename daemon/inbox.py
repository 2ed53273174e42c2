"""What is in the inbox, and which of it is ready to become a job.

A file is *settled* once its size, mtime and inode have stayed the same for
``watch.settle_seconds`` of the daemon's own observation: a copy over SMB or NFS
arrives in chunks, with pauses, sometimes as an empty file filled later, and its mtime
may be the source's (copies preserve it), so only watching it stop changing is safe.
A *group* is every file sharing a folder and a name (``cat.png`` + ``cat.txt``); it is
ready once all its files are settled and it is complete, or incomplete for longer
than ``watch.pair_timeout``.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .sidecar import SIDECAR_EXTS


@dataclass
class _Seen:
    sig: tuple[int, int, int]
    since: float  # clock reading when this signature was first observed


@dataclass
class Group:
    """One job's worth of inbox files: same folder, same name."""

    rel_dir: Path  # folder relative to the inbox ("." for the top)
    name: str
    images: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    since: float = 0.0  # when the last of its files last changed

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
        self.settle_seconds = settle_seconds
        self.pair_timeout = pair_timeout
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}
        self.waiting = 0  # files present but not yet part of a ready group

    def ignored(self, filename: str) -> bool:
        return any(fnmatch.fnmatchcase(filename, pat) for pat in self.ignore)

    def _walk(self, folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            if self.ignored(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                # Symlinks, FIFOs and devices are never jobs: a link could point anywhere
                # and opening a FIFO blocks.
                yield Path(entry.path), st

    def scan(self) -> list[Group]:
        """Observe the inbox once; return the groups ready now, oldest first."""
        now = self.clock()
        present: dict[Path, _Seen] = {}
        for path, st in self._walk(self.inbox):
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            old = self._seen.get(path)
            present[path] = old if old is not None and old.sig == sig else _Seen(sig, now)
        # Forget files that left, so a backlog that drains leaves nothing behind.
        self._seen = present

        groups: dict[tuple[Path, str], Group] = {}
        for path, seen in present.items():
            stem, ext = split_name(path.name)
            rel_dir = path.parent.relative_to(self.inbox)
            g = groups.setdefault((rel_dir, stem), Group(rel_dir, stem))
            (g.sidecars if ext in SIDECAR_EXTS else g.images).append(path)
            g.since = max(g.since, seen.since)

        ready = []
        self.waiting = 0
        for g in groups.values():
            quiet_for = now - g.since
            if quiet_for >= self.settle_seconds and (g.complete or quiet_for >= self.pair_timeout or self._clash(g)):
                g.images.sort()
                g.sidecars.sort()
                ready.append(g)
            else:
                self.waiting += len(g.files)
        ready.sort(key=lambda g: (g.since, str(g.rel_dir), g.name))
        return ready

    @staticmethod
    def _clash(g: Group) -> bool:
        # Two sidecars or two images for one name can never become a valid pair by waiting.
        return len(g.sidecars) > 1 or len(g.images) > 1
