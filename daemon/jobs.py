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
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from . import fsops
from .inbox import Group

RECORD = "claim.json"
ERROR_FILE = "error.txt"


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
        }

    @classmethod
    def from_record(cls, directory: Path, rec: dict[str, object]) -> Job:
        return cls(
            name=str(rec["job"]),
            stem=str(rec["stem"]),
            rel_dir=Path(str(rec["rel_dir"])),
            dir=directory,
            files=[str(f) for f in rec["files"]],  # type: ignore[attr-defined]
            claimed_at=datetime.fromisoformat(str(rec["claimed_at"])),
            attempts=int(rec["attempts"]),  # type: ignore[call-overload]
        )


def _taken(folders: Folders, rel_dir: Path, name: str) -> bool:
    return any((base / rel_dir / name).exists() for base in (folders.outputs, folders.done, folders.failed))


def _reserve(folders: Folders, rel_dir: Path, stem: str, when: datetime) -> tuple[str, Path]:
    """Pick the first free JOB name and take it by mkdir, which only one process can win."""
    base = f"{stem}_{when:%Y%m%d_%H%M%S}"
    parent = folders.claimed / rel_dir
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        name = base if n == 1 else f"{base}-{n}"
        n += 1
        if _taken(folders, rel_dir, name):
            continue
        try:
            (parent / name).mkdir()
        except FileExistsError:
            continue
        return name, parent / name


def claim(folders: Folders, group: Group, now: datetime) -> Job | None:
    """Take a ready group out of the inbox; None if another process took it first.

    Steps:
    1. reserve the JOB name by creating ``claimed/REL/JOB`` (mkdir is atomic);
    2. write ``claim.json`` before moving anything, so recovery knows what to expect;
    3. rename each file into ``inputs/``; a file that vanished means someone else took
       the group: put back what was already moved and give up the reservation;
    4. create ``out/`` for the outputs.
    """
    name, job_dir = _reserve(folders, group.rel_dir, group.name, now)
    job = Job(name, group.name, group.rel_dir, job_dir, [p.name for p in group.files], now)
    fsops.write_json_atomic(job_dir / RECORD, job.record())
    job.inputs.mkdir()
    moved: list[Path] = []
    for src in group.files:
        try:
            fsops.move(src, job.inputs / src.name)
        except FileNotFoundError:
            for p in moved:
                fsops.move(job.inputs / p.name, p)
            shutil.rmtree(job_dir)
            return None
        moved.append(src)
    job.out.mkdir()
    return job


def finish_done(folders: Folders, job: Job) -> Path:
    """Publish a finished job; return its outputs folder.

    Steps:
    1. rename ``out/`` to ``outputs/REL/JOB`` (the whole folder appears at once);
    2. rename ``inputs/`` to ``done/REL/JOB``;
    3. remove the claim.
    A crash between steps is finished by ``recover``, which sees the published outputs.
    """
    target = folders.outputs / job.rel_dir / job.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if job.out.exists():
        fsops.move(job.out, target)
    _settle_inputs(folders, job, JobState.DONE)
    return target


def finish_failed(folders: Folders, job: Job, reason: str, log: Path | None = None) -> Path:
    """Send a job's inputs to failed/ with an explanation; return that folder.

    Steps:
    1. write ``error.txt`` (and a copy of the job's log) beside the inputs;
    2. rename ``inputs/`` to ``failed/REL/JOB``, so all appear at once;
    3. drop any partial outputs and remove the claim.
    """
    text = reason.strip() + "\n\nTo try again, fix the problem and move the files back into the inbox.\n"
    fsops.write_atomic(job.inputs / ERROR_FILE, text.encode())
    if log is not None and log.exists():
        fsops.write_atomic(job.inputs / log.name, log.read_bytes())
    return _settle_inputs(folders, job, JobState.FAILED)


def release(folders: Folders, job: Job) -> None:
    """Return an unfinished job's inputs to the inbox untouched, as if never claimed.

    Steps:
    1. rename each input back to its place in the inbox (a name taken meanwhile keeps
       the job claimed, so nothing is overwritten; recovery retries at next start);
    2. remove the claim.
    """
    back = folders.inbox / job.rel_dir
    back.mkdir(parents=True, exist_ok=True)
    for name in job.files:
        src = job.inputs / name
        if src.exists():
            fsops.move(src, back / name)
    shutil.rmtree(job.dir)


def _settle_inputs(folders: Folders, job: Job, state: JobState) -> Path:
    target = folders.final(state) / job.rel_dir / job.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if job.inputs.exists():
        fsops.move(job.inputs, target)
    shutil.rmtree(job.dir)
    return target


@dataclass
class Recovered:
    job: Job
    state: JobState  # CLAIMED: run it again; DONE/FAILED: it was finished by recovery


def claimed_jobs(folders: Folders) -> Iterator[Path]:
    yield from sorted(p.parent for p in folders.claimed.rglob(RECORD))


def recover(folders: Folders, max_attempts: int) -> tuple[list[Job], list[Job]]:
    """Read back what a crash left under claimed/; return (to run again, over the attempt limit).

    A job whose outputs were already published, or whose failure was already written,
    is finished here; one that was mid-way is counted as one more attempt.
    """
    again, exhausted = [], []
    for job_dir in claimed_jobs(folders):
        try:
            job = Job.from_record(job_dir, json.loads((job_dir / RECORD).read_text()))
        except (OSError, ValueError, KeyError):
            # The record is written before anything moves: without one nothing was taken.
            if not any((job_dir / "inputs").glob("*")):
                shutil.rmtree(job_dir, ignore_errors=True)
            continue
        if not job.inputs.exists():
            shutil.rmtree(job_dir)
        elif (folders.outputs / job.rel_dir / job.name).exists():
            _settle_inputs(folders, job, JobState.DONE)
        elif (job.inputs / ERROR_FILE).exists():
            _settle_inputs(folders, job, JobState.FAILED)
        else:
            if job.out.exists():
                shutil.rmtree(job.out)
            job.out.mkdir()
            job.attempts += 1
            fsops.write_json_atomic(job_dir / RECORD, job.record())
            (exhausted if job.attempts > max_attempts else again).append(job)
    return again, exhausted
