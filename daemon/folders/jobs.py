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

import contextlib
import json
import os
import shutil
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from daemon import logs
from daemon.folders import fsops, names
from daemon.folders.names import ERROR_FILE
from daemon.folders.scan import Group, Signature, signature

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


def _write_record(job: Job) -> None:
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


def _reserve(folders: Folders, rel_dir: Path, stem: str, when: datetime) -> tuple[str, Path]:
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


class _Changed(Exception):
    """An inbox file is gone, replaced, or no longer a plain file: the claim is given up."""


def _check_regular(path: Path, expect: Signature | None) -> Signature:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _Changed(path) from None
    if not stat.S_ISREG(st.st_mode):
        raise _Changed(path)  # swapped for a symlink or a FIFO: never read, never taken
    sig = signature(st)
    if expect is not None and sig != expect:
        raise _Changed(path)  # written to again since it was judged settled
    return sig


def claim(folders: Folders, group: Group, now: datetime) -> Job | None:
    """Take a ready group out of the inbox; None if it changed or went meanwhile.

    Steps:
    1. check each file is still the plain file the scan judged settled, and that no one
       has it open for writing (where the kernel can tell);
    2. reserve the JOB name by creating ``claimed/REL/JOB`` (mkdir is atomic);
    3. write ``claim.json`` before moving anything, so recovery knows what to expect;
    4. rename each file into ``inputs/``; a file that vanished or changed means someone
       else has it: put back what was already moved and give up the reservation;
    5. create ``out/``: from here on the job is claimed whole.
    """
    try:
        sigs = {p.name: _check_regular(p, group.sigs.get(p)) for p in group.files}
    except _Changed:
        return None
    if group.held_open is not None and any(group.held_open(p) for p in group.files):
        return None  # still being written (an upload stalled with the file open): next scan
    try:
        name, job_dir = _reserve(folders, group.rel_dir, group.name, now)
    except OSError as e:
        _claim_trouble(e)
        return None
    job = Job(
        name,
        group.name,
        group.rel_dir,
        job_dir,
        [p.name for p in group.files],
        now,
        sigs=sigs,
        src_dir=group.src_dir,
    )
    try:
        _write_record(job)
        job.inputs.mkdir()
    except OSError as e:
        # Nothing has moved: drop the reservation and try again at the next scan.
        shutil.rmtree(job_dir, ignore_errors=True)
        _claim_trouble(e)
        return None
    try:
        for src in group.files:
            _check_regular(src, sigs[src.name])
            try:
                fsops.move(src, job.inputs / src.name)
            except FileNotFoundError:
                raise _Changed(src) from None
            # A swap between the check and the rename would have moved a link, not its target.
            _check_regular(job.inputs / src.name, None)
        job.out.mkdir()
        fsops.fsync_dir(job.dir)
        _tidy_returned(folders, group)
    except (_Changed, OSError) as e:
        # Marked first: should this not finish now, recovery puts the files back, not runs them.
        if not isinstance(e, _Changed):
            _claim_trouble(e)
        with contextlib.suppress(OSError):
            _put_back(folders, job, mark_first=True)
        return None
    _claim_trouble(None)
    return job


def _tidy_returned(folders: Folders, group: Group) -> None:
    """Remove a returned job folder once its inputs are claimed: the daemon's own files from the
    failed attempt (error.txt, JOB.log), file-manager litter, then the folder.

    When anything else is still in it (a person's other files), everything stays as it is.
    """
    if group.src_dir is None:
        return
    folder = folders.inbox / group.src_dir
    ours = {p.name for p in group.leftovers}
    try:
        present = os.listdir(folder)
    except OSError:
        return
    if any(n not in ours and n not in names.OS_LITTER and not n.startswith("._") for n in present):
        return
    with contextlib.suppress(OSError):
        for n in present:
            os.unlink(folder / n)
        folder.rmdir()


_last_trouble: list[str] = [""]


def _claim_trouble(error: OSError | None) -> None:
    """Log a claim that failed for a reason of the machine's (state folder full or read-only),
    once per distinct reason rather than once per scan; the files wait in the inbox meanwhile."""
    text = "" if error is None else f"{error.strerror or error}: {error.filename or ''}"
    if text and text != _last_trouble[0]:
        logs.get().error("cannot claim jobs; their files wait in the inbox", error=text)
    elif not text and _last_trouble[0]:
        logs.get().info("claiming jobs again")
    _last_trouble[0] = text


def _copied_across(ours: Path, theirs: Path) -> bool:
    """Whether ``theirs`` is the complete copy of ``ours`` that a move across filesystems
    renamed into place before a crash stopped it removing ``ours``."""
    try:
        a, b = os.lstat(ours), os.lstat(theirs)
        if a.st_dev == b.st_dev or a.st_size != b.st_size or not stat.S_ISREG(b.st_mode):
            return False
        with open(ours, "rb") as fa, open(theirs, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _put_back(folders: Folders, job: Job, *, mark_first: bool = False) -> bool:
    """Move a job's inputs back into the inbox and drop the claim; False if that cannot be done now.

    The ``returning`` marker is written before the first file moves, so a crash part-way is
    finished by ``recover`` the same way. Nothing in the inbox is ever replaced: when a name
    was taken meanwhile, or the inbox is gone (share unmounted), the job stays claimed.
    """
    if mark_first:
        fsops.write_atomic(job.dir / RETURNING, b"")
    back = folders.inbox / job.rel_dir
    if not folders.inbox.is_dir():
        return False
    names = sorted(os.listdir(job.inputs)) if job.inputs.is_dir() else []
    if any(os.path.lexists(back / n) and not _copied_across(job.inputs / n, back / n) for n in names):
        return False
    if not mark_first:
        fsops.write_atomic(job.dir / RETURNING, b"")
    try:
        back.mkdir(parents=True, exist_ok=True)
        for n in names:
            if os.path.lexists(back / n):
                (job.inputs / n).unlink()  # its complete copy is already back
            else:
                fsops.move(job.inputs / n, back / n)
    except OSError:
        return False
    shutil.rmtree(job.dir)
    return True


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


def _error_text(reason: str) -> bytes:
    text = reason.strip() + "\n\n" + names.RETRY_ADVICE + "\n"
    # A file name that is not valid UTF-8 may be quoted in the reason: escape it, never crash on it.
    return text.encode("utf-8", "backslashreplace")


def finish_failed(folders: Folders, job: Job, reason: str, log: Path | None = None) -> Path:
    """Send a job's inputs to failed/ with an explanation; return that folder.

    Steps:
    1. write ``error.txt`` (and a copy of the job's log) beside the inputs;
    2. rename ``inputs/`` to ``failed/REL/JOB``, so all appear at once;
    3. drop any partial outputs and remove the claim.
    """
    fsops.write_atomic(job.inputs / ERROR_FILE, _error_text(reason))
    if log is not None and log.exists() and log.name not in job.files:
        fsops.write_atomic(job.inputs / log.name, log.read_bytes())
    return _settle_inputs(folders, job, JobState.FAILED)


def release(folders: Folders, job: Job) -> bool:
    """Return an unfinished job's inputs to the inbox untouched, as if never claimed.

    Steps:
    1. check every name is free in the inbox and the inbox is there; if not, the job stays
       claimed (nothing is overwritten, nothing is created on an unmounted share) and is
       taken up again by ``recover`` at the next start: returns False;
    2. mark the claim as being returned, rename each input back, remove the claim.
    """
    return _put_back(folders, job, mark_first=False)


def _settle_inputs(folders: Folders, job: Job, state: JobState) -> Path:
    target = folders.final(state) / job.rel_dir / job.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if job.inputs.exists():
        if os.path.lexists(target):
            # Only a move across filesystems leaves both: the copy was complete (it is renamed
            # into place whole) and the crash came while the original was being removed.
            shutil.rmtree(job.inputs)
        else:
            fsops.move(job.inputs, target)
    shutil.rmtree(job.dir)
    return target


@dataclass
class Recovered:
    job: Job
    state: JobState  # CLAIMED: run it again; DONE/FAILED: it was finished by recovery


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def claimed_jobs(folders: Folders) -> Iterator[Path]:
    """Every job folder under claimed/, including one a crash left before its record was written.

    Mirrored inbox subfolders are walked through; a job folder is one with a record, or one
    named like a job holding only a half-written record or an ``inputs`` folder of files.
    """

    def walk(folder: Path) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if (path / RECORD).exists():
                yield path
                continue
            if names.is_job_name(entry.name):
                kids = os.listdir(path)
                inputs = path / "inputs"
                if all(_is_temp(k) for k in kids) or (
                    inputs.is_dir()
                    and all((inputs / k).is_file() for k in os.listdir(inputs))
                    and set(kids) <= {"inputs", "out", RETURNING} | {k for k in kids if _is_temp(k)}
                ):
                    yield path
                    continue
            yield from walk(path)

    yield from walk(folders.claimed)


def _prune_empty(folder: Path, root: Path) -> None:
    """Remove the empty mirrored subfolders a finished job leaves under claimed/."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _load(folders: Folders, job_dir: Path) -> Job | None:
    try:
        return Job.from_record(job_dir, json.loads((job_dir / RECORD).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # No readable record. It is written before anything moves, so with empty inputs nothing
    # was taken; files in inputs/ (a damaged record) are rebuilt into a job from the folders.
    inputs = job_dir / "inputs"
    names = sorted(os.listdir(inputs)) if inputs.is_dir() else []
    if not names:
        shutil.rmtree(job_dir, ignore_errors=True)
        return None
    name = job_dir.name
    stem = name.rsplit("_", 2)[0] if name.count("_") >= 2 else name
    job = Job(name, stem, job_dir.parent.relative_to(folders.claimed), job_dir, names, datetime.now())
    _write_record(job)
    return job


def _complete_claim(folders: Folders, job: Job) -> list[str]:
    """Bring back into inputs/ what a crash mid-claim (or mid-put-back) left in the inbox.

    Only the very file that was being claimed is taken (same size, mtime and inode), never a
    new one of the same name dropped since. Returns the names now in inputs/.
    """
    for name in job.files:
        here, there = job.inputs / name, folders.inbox / job.source / name
        if os.path.lexists(here):
            if _copied_across(here, there):
                with contextlib.suppress(_Changed):
                    _check_regular(there, job.sigs.get(name) or (0, 0, 0))
                    there.unlink()  # the original a cross-filesystem move had not yet removed
            continue
        with contextlib.suppress(_Changed, OSError):
            _check_regular(there, job.sigs.get(name))
            if name in job.sigs or not job.sigs:
                fsops.move(there, here)
    return [n for n in job.files if os.path.lexists(job.inputs / n)]


def recover(folders: Folders, max_attempts: int) -> tuple[list[Job], list[Job]]:
    """Read back what a crash left under claimed/; return (to run again, over the attempt limit).

    A job whose outputs were already published, or whose failure was already written, is
    finished here; one being put back into the inbox is put back; one caught mid-claim is
    completed; one that was mid-way through its work is counted as one more attempt. A
    claim that cannot be sorted out now (a disk error) is logged and left for the next start.
    """
    log = logs.get()
    again, exhausted = [], []
    for job_dir in list(claimed_jobs(folders)):
        try:
            job = _recover_one(folders, job_dir)
        except OSError as e:
            log.error("cannot recover claimed job; it stays claimed", job=job_dir.name, error=str(e))
            continue
        if job is None:
            _prune_empty(job_dir.parent, folders.claimed)
        else:
            (exhausted if job.attempts > max_attempts else again).append(job)
    return again, exhausted


def _recover_one(folders: Folders, job_dir: Path) -> Job | None:
    job = _load(folders, job_dir)
    if job is None:
        return None
    for base in (folders.outputs, folders.done, folders.failed):
        fsops.remove_temps(base / job.rel_dir / job.name)
    for name in job.files:
        fsops.remove_temps(job.inputs / name)
    returning = (job.dir / RETURNING).exists()
    if (folders.outputs / job.rel_dir / job.name).exists():
        _settle_inputs(folders, job, JobState.DONE)
        return None
    if not job.inputs.exists():
        shutil.rmtree(job_dir)  # nothing was taken yet, or the inputs were already filed
        return None
    if (job.inputs / ERROR_FILE).exists():
        _settle_inputs(folders, job, JobState.FAILED)
        return None
    if returning:
        if _put_back(folders, job, mark_first=True):
            return None
        # It cannot go back now (a name taken in the inbox meanwhile, or no inbox): run it.
        (job.dir / RETURNING).unlink()
    present = _complete_claim(folders, job)
    if not present:
        shutil.rmtree(job_dir)  # nothing was taken
        return None
    job.files = present  # a file the user took back during the crash is not waited for
    if job.out.is_dir():
        # Claimed whole before the crash: this counts as one more attempt. Partial outputs
        # go; the log stays, so it tells every attempt.
        job.attempts += 1
        for entry in os.scandir(job.out):
            if entry.name != f"{job.name}.log":
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    else:
        job.out.mkdir()  # caught mid-claim: the work never began
    _write_record(job)
    return job


def count_attempt(job: Job) -> None:
    """One more attempt of a claimed job (its worker died mid-way), kept in its claim record."""
    job.attempts += 1
    _write_record(job)
