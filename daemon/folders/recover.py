"""Reading back what a crash left under ``claimed/`` and finishing it, at every start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from daemon import logs
from daemon.folders import fsops, moves, names, safe_dirs, trust
from daemon.folders.claim import Changed, check_regular_at, put_back
from daemon.folders.jobs import RECORD, RETURNING, BadRecord, Folders, Job, JobState, write_record
from daemon.folders.names import ERROR_FILE
from daemon.folders.publish import settle_inputs


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
            if os.path.lexists(path / RECORD):
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


# A claim record is a few hundred bytes; one far larger is not ours.
_RECORD_MAX = 1 << 20


def _read_record(job_dir: Path) -> object | None:
    """The parsed claim record; None when there is none or it is not JSON (a damaged record).

    BadRecord when it is not a plain file (a link): the daemon never writes one.
    """
    try:
        data = trust.read_regular(job_dir / RECORD, _RECORD_MAX)
    except trust.NotRegular:
        raise BadRecord(f"{RECORD} is not a plain file") from None
    except OSError:
        return None
    if len(data) > _RECORD_MAX:
        raise BadRecord(f"{RECORD} is too large")
    try:
        return json.loads(data)
    except ValueError:
        return None


def _trusted_job(folders: Folders, job_dir: Path, rec: object) -> Job:
    """The job a claim record names, if it is one the daemon could have written for this folder.

    Besides ``Job.from_record``'s checks: the record must name the folder it lies in.
    """
    job = Job.from_record(job_dir, rec)
    where = job_dir.parent.relative_to(folders.claimed)
    if job.name != job_dir.name or job.rel_dir != where:
        raise BadRecord(f"it names {(job.rel_dir / job.name).as_posix()}, not the folder it is in")
    return job


def _plain_inputs(job_dir: Path) -> list[str]:
    """The names in inputs/; BadRecord if one is not a plain file (a claim moves only plain files
    there, and the daemon writes only error.txt beside them), so no link is ever filed, or if
    inputs/ or out/ is not a real folder (recovery empties out/: never through a link)."""
    for sub in ("inputs", "out"):
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(job_dir / sub).st_mode):
                raise BadRecord(f"{sub} is not a folder")
    inputs = job_dir / "inputs"
    found = sorted(os.listdir(inputs)) if inputs.is_dir() else []
    for name in found:
        if not stat.S_ISREG(os.lstat(inputs / name).st_mode):
            raise BadRecord(f"inputs/{name} is not a plain file")
    return found


def _load(folders: Folders, job_dir: Path) -> Job | None:
    rec = _read_record(job_dir)
    names = _plain_inputs(job_dir)
    if rec is not None:
        return _trusted_job(folders, job_dir, rec)
    # No readable record. It is written before anything moves, so with empty inputs nothing
    # was taken; files in inputs/ (a damaged record) are rebuilt into a job from the folders.
    if not names:
        shutil.rmtree(job_dir, ignore_errors=True)
        return None
    name = job_dir.name
    stem = name.rsplit("_", 2)[0] if name.count("_") >= 2 else name
    job = Job(name, stem, job_dir.parent.relative_to(folders.claimed), job_dir, names, datetime.now())
    write_record(job)
    return job


def _complete_claim(folders: Folders, job: Job) -> list[str]:
    """Bring back into inputs/ what a crash mid-claim (or mid-put-back) left in the inbox.

    Only the very file that was being claimed is taken (same size, mtime and inode), never a
    new one of the same name dropped since. The inbox folder is opened without following links
    (a share user may have swapped it for one during the crash): a link there brings nothing
    back. Returns the names now in inputs/.
    """
    try:
        src = safe_dirs.open_under(folders.inbox, job.source, create=False)
    except OSError:  # gone, or a link (NotAFolder): nothing of this job is there any more
        src = None
    if src is not None:
        try:
            dst = os.open(job.inputs, safe_dirs.DIR_FLAGS)
            try:
                for name in job.files:
                    _bring_back(job, name, src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    return [n for n in job.files if os.path.lexists(job.inputs / n)]


def _bring_back(job: Job, name: str, src: int, dst: int) -> None:
    if moves.exists_at(dst, name):
        if moves.copied_whole_at(job.inputs / name, src, name):
            with contextlib.suppress(Changed, OSError):
                check_regular_at(src, name, job.sigs.get(name) or (0, 0, 0))
                os.unlink(name, dir_fd=src)  # the original a cross-filesystem move had not yet removed
        return
    with contextlib.suppress(Changed, OSError):
        check_regular_at(src, name, job.sigs.get(name))
        if name in job.sigs or not job.sigs:
            moves.move_at(src, name, dst, name)


def _published(folders: Folders, job: Job) -> bool:
    """Whether the job's outputs folder is in outputs/, where filing puts it: under its inbox
    subfolder, or at the top when that subfolder was refused as a link. Looked up without
    following links, so a planted ``outputs/team`` link to a folder holding JOB proves nothing."""
    for rel in (job.rel_dir, "."):
        try:
            with safe_dirs.opened(folders.outputs, rel) as fd:
                return safe_dirs.is_dir_at(fd, job.name)
        except safe_dirs.NotAFolder:
            continue
        except OSError:
            return False
    return False


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
        except BadRecord as e:
            # Not written by the daemon: acting on it could move files anywhere. An operator looks.
            log.error(
                "claim record not trusted; the claimed folder is left as it is",
                folder=str(job_dir),
                problem=str(e),
            )
            continue
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
        safe_dirs.remove_temps_under(base, job.rel_dir, job.name)
    for name in job.files:
        fsops.remove_temps(job.inputs / name)
    returning = (job.dir / RETURNING).exists()
    if _published(folders, job):
        settle_inputs(folders, job, JobState.DONE)
        return None
    if not job.inputs.exists():
        shutil.rmtree(job_dir)  # nothing was taken yet, or the inputs were already filed
        return None
    if (job.inputs / ERROR_FILE).exists():
        settle_inputs(folders, job, JobState.FAILED)
        return None
    if returning:
        if put_back(folders, job, mark_first=True):
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
            if entry.name != names.job_files(job.name).log:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    else:
        job.out.mkdir()  # caught mid-claim: the work never began
    write_record(job)
    return job
