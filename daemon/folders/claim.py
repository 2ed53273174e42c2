"""Taking a ready group out of the inbox, and putting a job's files back into it.

Claim by rename, as Maildir does: a rename that fails means someone else took the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from datetime import datetime
from pathlib import Path

from daemon import logs
from daemon.folders import fsops, names
from daemon.folders.jobs import RETURNING, Folders, Job, reserve, write_record
from daemon.folders.scan import Group, Signature, signature


class Changed(Exception):
    """An inbox file is gone, replaced, or no longer a plain file: the claim is given up."""


def check_regular(path: Path, expect: Signature | None) -> Signature:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Changed(path) from None
    if not stat.S_ISREG(st.st_mode):
        raise Changed(path)  # swapped for a symlink or a FIFO: never read, never taken
    sig = signature(st)
    if expect is not None and sig != expect:
        raise Changed(path)  # written to again since it was judged settled
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
        sigs = {p.name: check_regular(p, group.sigs.get(p)) for p in group.files}
    except Changed:
        return None
    if group.held_open is not None and any(group.held_open(p) for p in group.files):
        return None  # still being written (an upload stalled with the file open): next scan
    try:
        name, job_dir = reserve(folders, group.rel_dir, group.name, now)
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
        write_record(job)
        job.inputs.mkdir()
    except OSError as e:
        # Nothing has moved: drop the reservation and try again at the next scan.
        shutil.rmtree(job_dir, ignore_errors=True)
        _claim_trouble(e)
        return None
    try:
        for src in group.files:
            check_regular(src, sigs[src.name])
            try:
                fsops.move(src, job.inputs / src.name)
            except FileNotFoundError:
                raise Changed(src) from None
            # A swap between the check and the rename would have moved a link, not its target.
            check_regular(job.inputs / src.name, None)
        job.out.mkdir()
        fsops.fsync_dir(job.dir)
        _tidy_returned(folders, group)
    except (Changed, OSError) as e:
        # Marked first: should this not finish now, recovery puts the files back, not runs them.
        if not isinstance(e, Changed):
            _claim_trouble(e)
        with contextlib.suppress(OSError):
            put_back(folders, job, mark_first=True)
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


def copied_across(ours: Path, theirs: Path) -> bool:
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


def put_back(folders: Folders, job: Job, *, mark_first: bool = False) -> bool:
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
    if any(os.path.lexists(back / n) and not copied_across(job.inputs / n, back / n) for n in names):
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


def release(folders: Folders, job: Job) -> bool:
    """Return an unfinished job's inputs to the inbox untouched, as if never claimed.

    Steps:
    1. check every name is free in the inbox and the inbox is there; if not, the job stays
       claimed (nothing is overwritten, nothing is created on an unmounted share) and is
       taken up again by ``recover`` at the next start: returns False;
    2. mark the claim as being returned, rename each input back, remove the claim.
    """
    return put_back(folders, job, mark_first=False)
