"""The folder state machine: inbox -> claimed -> outputs/ + done/, or failed/.

A job's state is where its files are, so a crash at any instant leaves a state that
``recover`` can read back and finish. While claimed, a job lives in
``STATE/claimed/REL/JOB/``::

    claim.json   what was taken, from where, when, and how many attempts so far
    inputs/      the original files, moved (never copied) out of the inbox
    out/         the outputs being made; published whole by one rename

Inputs are only ever renamed, so they stay byte-identical, and each lands in exactly
one of done/ or failed/. Nothing in outputs/, done/ or failed/ is touched once
published there.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from daemon.folders import fsops, names
from daemon.folders.scan import Signature

RECORD = "claim.json"
# Present while a claim is being undone or a job put back into the inbox: recovery finishes
# putting it back instead of running it.
RETURNING = "returning"

# outputs/JOB/ holds JOB.RECIPE.EXT (recipe names up to 32 bytes, extensions up to 10): a
# JOB name of at most 200 bytes keeps every such file name within NAME_MAX (255).
JOB_NAME_MAX = 200
_CLASH_BYTES = len("-99999")
STEM_MAX = JOB_NAME_MAX - names.STAMP_BYTES - _CLASH_BYTES


class JobState(StrEnum):
    """Where a job's inputs are; each value is the name of that folder."""

    INBOX = "inbox"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Folders:
    inbox: Path
    outputs: Path
    done: Path
    failed: Path
    state: Path

    @property
    def claimed(self) -> Path:
        return self.state / JobState.CLAIMED.value

    def ensure(self) -> None:
        for p in (self.inbox, self.outputs, self.done, self.failed, self.claimed):
            p.mkdir(parents=True, exist_ok=True)

    def final(self, state: JobState) -> Path:
        return {JobState.DONE: self.done, JobState.FAILED: self.failed, JobState.INBOX: self.inbox}[state]


@dataclass
class Job:
    name: str  # NAME_YYYYMMDD_HHMMSS[-N]: the folder name under outputs/, done/, failed/
    stem: str  # NAME, as the user wrote it
    rel_dir: Path  # subfolder of the inbox it came from
    dir: Path  # its folder under STATE/claimed
    files: list[str]  # original file names, now in inputs/
    claimed_at: datetime
    attempts: int = 1
    # Each file's (size, mtime_ns, inode) when claimed: recovery uses it to tell the file it
    # was moving from a new one of the same name dropped meanwhile.
    sigs: dict[str, Signature] = field(default_factory=dict)
    # The inbox folder the files were taken from, when not ``rel_dir`` (a returned job folder).
    src_dir: Path | None = None

    @property
    def source(self) -> Path:
        return self.src_dir if self.src_dir is not None else self.rel_dir

    @property
    def inputs(self) -> Path:
        return self.dir / "inputs"

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def record(self) -> dict[str, object]:
        return {
            "job": self.name,
            "stem": self.stem,
            "rel_dir": self.rel_dir.as_posix(),
            "files": self.files,
            "claimed_at": self.claimed_at.isoformat(timespec="seconds"),
            "attempts": self.attempts,
            "sigs": {name: list(sig) for name, sig in self.sigs.items()},
            "src_dir": self.src_dir.as_posix() if self.src_dir is not None else None,
        }

    @classmethod
    def from_record(cls, directory: Path, rec: dict[str, object]) -> Job:
        sigs = rec.get("sigs") or {}
        return cls(
            name=str(rec["job"]),
            stem=str(rec["stem"]),
            rel_dir=Path(str(rec["rel_dir"])),
            dir=directory,
            files=[str(f) for f in rec["files"]],  # type: ignore[attr-defined]
            claimed_at=datetime.fromisoformat(str(rec["claimed_at"])),
            attempts=int(rec["attempts"]),  # type: ignore[call-overload]
            sigs={str(k): tuple(int(x) for x in v) for k, v in sigs.items()},  # type: ignore[attr-defined,misc]
            src_dir=Path(str(rec["src_dir"])) if rec.get("src_dir") else None,
        )


def write_record(job: Job) -> None:
    # ASCII JSON: a file name that is not valid UTF-8 (kept by Python as surrogates) round-trips.
    fsops.write_atomic(job.dir / RECORD, (json.dumps(job.record(), indent=2) + "\n").encode())


def job_stem(stem: str) -> str:
    """The NAME part of a JOB name: the user's name, cut on a character boundary if it is too long.

    The input files keep their full names; only the folder names made from it are shortened.
    Bytes that are not UTF-8 (a Latin-1 name from an NFS client) become U+FFFD here, so the
    JOB name is text every tool (ffmpeg's argument list, JSON, HTML) can carry.
    """
    stem = stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    cut = fsops.truncate_name(stem, STEM_MAX)
    return cut if cut else "job"


def _spellings(name: str) -> set[str]:
    # macOS clients write decomposed (NFD) names, Windows and Linux composed (NFC) ones; a share
    # may show both as one name, so a JOB name is taken if any spelling of it is.
    return {name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)}


def _taken(folders: Folders, rel_dir: Path, name: str) -> bool:
    bases = (folders.outputs, folders.done, folders.failed, folders.claimed)
    return any(os.path.lexists(base / rel_dir / n) for base in bases for n in _spellings(name))


def reserve(folders: Folders, rel_dir: Path, stem: str, when: datetime) -> tuple[str, Path]:
    """Pick the first free JOB name and take it by mkdir, which only one process can win."""
    parent = folders.claimed / rel_dir
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        name = names.job_name(job_stem(stem), when, n)
        n += 1
        if _taken(folders, rel_dir, name):
            continue
        try:
            (parent / name).mkdir()
        except FileExistsError:
            continue
        return name, parent / name


def count_attempt(job: Job) -> None:
    """One more attempt of a claimed job (its worker died mid-way), kept in its claim record."""
    job.attempts += 1
    write_record(job)
