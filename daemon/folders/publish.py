"""Filing a finished job: its outputs published whole, its inputs to done/ or failed/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from daemon.folders import fsops, names
from daemon.folders.jobs import Folders, Job, JobState
from daemon.folders.names import ERROR_FILE


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
    settle_inputs(folders, job, JobState.DONE)
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
    return settle_inputs(folders, job, JobState.FAILED)


def settle_inputs(folders: Folders, job: Job, state: JobState) -> Path:
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
