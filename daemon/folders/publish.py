"""Filing a finished job: its outputs published whole, its inputs to done/ or failed/.

Share users can write below outputs/, done/ and failed/, so the folders a job is filed into
are opened with ``safe_dirs`` (no link followed) and nothing there is ever replaced; see
``_file`` for what is done instead when a share user's link or folder is in the way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from daemon import logs
from daemon.folders import fsops, moves, names, safe_dirs
from daemon.folders.jobs import RECORD, Folders, Job, JobState
from daemon.folders.names import ERROR_FILE
from daemon.messages import RETRY_ADVICE

# JOB-2, JOB-3, ... tried beside a JOB name someone on the share took; then the job stays claimed.
MAX_CLASH = 1000


def finish_done(folders: Folders, job: Job) -> Path:
    """Publish a finished job; return its outputs folder.

    Steps:
    1. rename ``out/`` to ``outputs/REL/JOB`` (the whole folder appears at once);
    2. rename ``inputs/`` to ``done/REL/JOB``;
    3. remove the claim.
    A crash between steps is finished by ``recover``, which sees the published outputs.
    """
    target = folders.outputs / job.rel_dir / job.name
    if job.out.exists():
        target = _file(folders.outputs, job, job.out)
    settle_inputs(folders, job, JobState.DONE)
    return target


def _error_text(reason: str, advice: str = RETRY_ADVICE) -> bytes:
    text = reason.strip() + "\n\n" + advice + "\n"
    # A file name that is not valid UTF-8 may be quoted in the reason: escape it, never crash on it.
    return text.encode("utf-8", "backslashreplace")


def error_text(reason: str, advice: str = RETRY_ADVICE) -> str:
    """What ``error.txt`` says (and the share page and webhooks show) for a failure: the reason,
    then ``advice``, how to try again (``RERUN_ADVICE`` for a cancelled job: nothing to fix)."""
    return _error_text(reason, advice).decode("utf-8")


def finish_failed(
    folders: Folders, job: Job, reason: str, log: Path | None = None, advice: str = RETRY_ADVICE
) -> Path:
    """Send a job's inputs to failed/ with an explanation (``error_text``); return that folder.

    Steps:
    1. write ``error.txt`` (and a copy of the job's log) beside the inputs;
    2. rename ``inputs/`` to ``failed/REL/JOB``, so all appear at once;
    3. drop any partial outputs and remove the claim.
    """
    fsops.write_atomic(job.inputs / ERROR_FILE, _error_text(reason, advice))
    if log is not None and log.exists() and log.name not in job.files:
        fsops.write_atomic(job.inputs / log.name, log.read_bytes())
    return settle_inputs(folders, job, JobState.FAILED)


def settle_inputs(folders: Folders, job: Job, state: JobState) -> Path:
    """File a job's inputs into done/ or failed/ (see ``_file``) and remove its claim."""
    target = folders.final(state) / job.rel_dir / job.name
    if job.inputs.exists():
        target = _file(folders.final(state), job, job.inputs)
    remove_claim(job)
    return target


def remove_claim(job: Job) -> None:
    """Remove a filed job's claim folder: its record, then the folder; whatever else is left
    there (the partial outputs of a failed job) goes with ``rmtree``, which costs several times
    more than these two calls in a backlog."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(job.dir / RECORD)
    try:
        os.rmdir(job.dir)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(job.dir)


def _file(base: Path, job: Job, src: Path) -> Path:
    """Rename ``src`` (a folder in the state folder) to ``base/REL/JOB`` whole; return where it went.

    Nothing below ``base`` is followed and nothing a share user put there is replaced:

    - REL, or a folder above it, is a link (or a file): refused with a warning naming it, and
      the job is filed at the top of ``base`` (``outputs/JOB``) instead. The link and whatever
      it points at are left alone; nothing is written outside the share.
    - JOB is taken by a folder someone made: the next free ``JOB-2``, ``JOB-3``... beside it,
      with a warning; after ``MAX_CLASH`` tries FileExistsError, and the job stays claimed.
    - JOB holds a complete copy of ``src`` on another filesystem (a move across filesystems
      that a crash stopped before it removed the original): that is where it was filed, and
      ``src`` goes.
    """
    if os.sep in job.name or job.name in ("", ".", ".."):
        raise OSError(f"not a folder name: {job.name!r}")
    fd, rel = safe_dirs.open_or_top(
        base, job.rel_dir, instead=f"filing job {job.name} at the top of {base} instead"
    )
    try:
        for name in _names(job.name):
            try:
                moves.move_at(None, src, fd, name)
            except FileExistsError:
                if moves.copied_whole_at(src, fd, name):
                    shutil.rmtree(src)
                    return base / rel / name
                continue
            if name != job.name:
                logs.get().warning(
                    "a folder of this job's name was already there; filed beside it",
                    job=job.name,
                    folder=str(base / rel / name),
                )
            return base / rel / name
    finally:
        os.close(fd)
    raise FileExistsError(f"every name for job {job.name} is taken in {base / rel}")


def _names(job: str) -> Iterator[str]:
    """``job``, then the JOB names after it: ``cat_…_143005`` -> ``-2``, ``-3``; ``…-2`` -> ``-3``."""
    yield job
    m = names.JOB_NAME.fullmatch(job)
    stem, first = job, 2
    if m is not None and m["clash"]:
        stem, first = job[: m.start("clash") - 1], int(m["clash"]) + 1
    for n in range(first, first + MAX_CLASH):
        yield f"{stem}-{n}"
