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

from daemon.folders import fsops, names, trust
from daemon.folders.group import Signature

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
        """Make the folders, the state folder private to the daemon's user (trust.Untrusted if it cannot)."""
        trust.secure_state(self.state)
        self.claimed.mkdir(mode=trust.PRIVATE_MODE, exist_ok=True)
        for p in (self.inbox, self.outputs, self.done, self.failed):
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
    # The seed drawn for a job whose prompt file names none, kept across attempts so that a
    # resumed job makes the clip it would have made.
    seed: int | None = None

    @property
    def source(self) -> Path:
        return self.src_dir if self.src_dir is not None else self.rel_dir

    @property
    def inputs(self) -> Path:
        return self.dir / "inputs"

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def claim_record(self) -> ClaimRecord:
        """What its claim.json says."""
        return ClaimRecord(
            job=self.name,
            stem=self.stem,
            rel_dir=self.rel_dir,
            files=tuple(self.files),
            claimed_at=self.claimed_at,
            attempts=self.attempts,
            sigs=dict(self.sigs),
            src_dir=self.src_dir,
            seed=self.seed,
        )

    @classmethod
    def from_record(cls, directory: Path, rec: object) -> Job:
        """The job a claim.json read back describes (BadRecord if not sound: ``ClaimRecord.from_dict``)."""
        claim = ClaimRecord.from_dict(rec)
        return cls(
            name=claim.job,
            stem=claim.stem,
            rel_dir=claim.rel_dir,
            dir=directory,
            files=list(claim.files),
            claimed_at=claim.claimed_at,
            attempts=claim.attempts,
            sigs=dict(claim.sigs),
            src_dir=claim.src_dir,
            seed=claim.seed,
        )


@dataclass(frozen=True)
class ClaimRecord:
    """claim.json: what was taken, from where, when, and how many attempts so far.

    Written by the daemon and read back by recovery as if a stranger had written it: ``from_dict``
    checks every field before anything acts on it.
    """

    job: str  # the JOB name
    stem: str
    rel_dir: Path
    files: tuple[str, ...]
    claimed_at: datetime
    attempts: int = 1
    sigs: dict[str, Signature] = field(default_factory=dict)
    src_dir: Path | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "job": self.job,
            "stem": self.stem,
            "rel_dir": self.rel_dir.as_posix(),
            "files": list(self.files),
            "claimed_at": self.claimed_at.isoformat(timespec="seconds"),
            "attempts": self.attempts,
            "sigs": {name: list(sig) for name, sig in self.sigs.items()},
            "src_dir": self.src_dir.as_posix() if self.src_dir is not None else None,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, rec: object) -> ClaimRecord:
        """The record a parsed claim.json holds, checked as if a stranger wrote it (BadRecord if not sound).

        Every path in it must stay inside the folders (relative, no ``..``), every file name be a
        plain name, the JOB name have the JOB shape, and the numbers be in range: recovery moves
        files by what it says.
        """
        if not isinstance(rec, dict):
            raise BadRecord("it is not a JSON object")
        try:
            files = rec["files"]
            if not isinstance(files, list) or not files or len(files) > MAX_FILES:
                raise BadRecord("files is not a list of file names")
            names_ = [_plain_name(f, "files") for f in files]
            if len(set(names_)) != len(names_):
                raise BadRecord("files names a file twice")
            name = _plain_name(rec["job"], "job")
            if not names.is_job_name(name):
                raise BadRecord(f"job {name!r} is not a job name")
            sigs = rec.get("sigs") or {}
            if not isinstance(sigs, dict) or not all(k in names_ for k in sigs):
                raise BadRecord("sigs does not match files")
            seed = rec.get("seed")
            if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
                raise BadRecord(f"seed {seed!r} is not a seed")
            attempts = rec["attempts"]
            if not (_is_int(attempts) and 1 <= attempts <= MAX_ATTEMPTS):
                raise BadRecord(f"attempts {attempts!r} is not a small count")
            stem = rec["stem"]
            if not isinstance(stem, str) or len(stem) > fsops.NAME_MAX:
                raise BadRecord("stem is not a name")
            return cls(
                job=name,
                stem=stem,
                rel_dir=_inside(rec["rel_dir"], "rel_dir"),
                files=tuple(names_),
                claimed_at=datetime.fromisoformat(str(rec["claimed_at"])),
                attempts=attempts,
                sigs={k: _signature(v) for k, v in sigs.items()},
                src_dir=_inside(rec["src_dir"], "src_dir") if rec.get("src_dir") else None,
                seed=seed,
            )
        except KeyError as e:
            raise BadRecord(f"{e.args[0]} is missing") from None
        except (TypeError, ValueError) as e:
            raise BadRecord(str(e)) from None


# Bounds on what a sound claim record holds: a job is a few files, retried a bounded number of times.
MAX_FILES = 1000
MAX_ATTEMPTS = 1_000_000


class BadRecord(ValueError):
    """A claim record that the daemon cannot have written; the job it names is not acted on."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_name(value: object, key: str) -> str:
    """A file or folder name with no path in it (what ``os.listdir`` could return)."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\x00" in value:
        raise BadRecord(f"{key}: {value!r} is not a plain file name")
    try:
        if fsops.name_bytes(value) > fsops.NAME_MAX:
            raise BadRecord(f"{key}: {value[:40]!r}... is too long for a file name")
    except UnicodeEncodeError:
        raise BadRecord(f"{key}: {value!r} is not a file name") from None
    return value


def _inside(value: object, key: str) -> Path:
    """A folder relative to the inbox (and so to outputs/, done/, failed/, claimed/): never leaves it."""
    if not isinstance(value, str) or "\x00" in value:
        raise BadRecord(f"{key} is not a folder path")
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise BadRecord(f"{key} {value!r} points outside the folders")
    for part in path.parts:
        _plain_name(part, key)
    return path


def _signature(value: object) -> Signature:
    if not isinstance(value, list) or len(value) != 3 or not all(_is_int(x) for x in value):
        raise BadRecord("sigs holds something that is not a file signature")
    return (value[0], value[1], value[2])


def write_record(job: Job, *, fresh: bool = False) -> None:
    """Write the claim record. ``fresh``: the first, into the folder ``reserve`` just made, before
    anything moved there; written straight to its name (``fsops.write_unseen``), since recovery
    drops a claim whose record a crash cut short while nothing was moved yet. A record rewritten
    later replaces the old one atomically. The caller fsyncs the folder.
    """
    # ASCII JSON: a file name that is not valid UTF-8 (kept by Python as surrogates) round-trips.
    data = (json.dumps(job.claim_record().to_dict(), indent=2) + "\n").encode()
    if fresh:
        fsops.write_unseen(job.dir / RECORD, data)
    else:
        fsops.write_atomic(job.dir / RECORD, data)


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
