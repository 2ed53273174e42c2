"""A group: one job's worth of inbox files (same folder, same name), as the scanner hands it over."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Signature = tuple[int, int, int]  # size, mtime in ns, inode


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


def same_group(a: Group, b: Group) -> bool:
    """Whether a group judged again is the one already queued (its place in the queue stands)."""
    return (a.since, a.sigs, a.src_dir, a.leftovers) == (b.since, b.sigs, b.src_dir, b.leftovers)
