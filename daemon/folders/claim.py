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
from daemon.folders import fsops, moves, names, safe_dirs
from daemon.folders.group import Group, Signature, signature
from daemon.folders.jobs import RETURNING, Folders, Job, reserve, write_record


class Changed(Exception):
    """An inbox file is gone, replaced, or no longer a plain file: the claim is given up."""


def check_regular(path: Path, expect: Signature | None) -> Signature:
    return check_regular_at(None, path, expect)


def check_regular_at(dir_fd: int | None, name: str | Path, expect: Signature | None) -> Signature:
    """The signature of the plain file ``name`` (in the open folder ``dir_fd``, or a path when
    None); Changed if it is gone, not a plain file, or not the file ``expect`` describes."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise Changed(name) from None
    if not stat.S_ISREG(st.st_mode):
        raise Changed(name)  # swapped for a symlink or a FIFO: never read, never taken
    sig = signature(st)
    if expect is not None and sig != expect:
        raise Changed(name)  # written to again since it was judged settled
    return sig


def claim(folders: Folders, group: Group, now: datetime, *, seed: int | None = None) -> Job | None:
    """Take a ready group out of the inbox; None if it changed or went meanwhile. ``seed``, drawn
    by the caller, goes into the claim record (kept across every attempt of the job).

    Steps:
    1. open the group's inbox folder without following a link below the inbox (a link a
       share user swapped in after the scan is refused: the claim is given up);
    2. check each file is still the plain file the scan judged settled, and that no one
       has it open for writing (where the kernel can tell);
    3. reserve the JOB name by creating ``claimed/REL/JOB`` (mkdir is atomic);
    4. write ``claim.json`` before moving anything, so recovery knows what to expect;
    5. rename each file into ``inputs/``, from the folder opened in step 1; a file that
       vanished or changed means someone else has it: put back what was already moved and
       give up the reservation; then fsync ``inputs/`` once;
    6. create ``out/``: from here on the job is claimed whole.
    """
    try:
        src_fd = safe_dirs.open_under(folders.inbox, group.source, create=False)
    except safe_dirs.NotAFolder as e:
        logs.get().warning(
            f"refused a folder in the inbox: it {e.reason}; its files are not taken", folder=str(e.where)
        )
        return None
    except OSError:
        return None  # gone since the scan: the next scan sees what is there now
    try:
        return _claim_from(folders, group, now, src_fd, seed)
    finally:
        os.close(src_fd)


def _claim_from(folders: Folders, group: Group, now: datetime, src_fd: int, seed: int | None) -> Job | None:
    try:
        sigs = {p.name: check_regular_at(src_fd, p.name, group.sigs.get(p)) for p in group.files}
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
        seed=seed,
    )
    try:
        write_record(job, fresh=True)
        job.inputs.mkdir()
        inputs_fd = os.open(job.inputs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        # Nothing has moved: drop the reservation and try again at the next scan.
        shutil.rmtree(job_dir, ignore_errors=True)
        _claim_trouble(e)
        return None
    try:
        for src in group.files:
            check_regular_at(src_fd, src.name, sigs[src.name])
            try:
                moves.move_at(src_fd, src.name, inputs_fd, src.name, sync=False)
            except FileNotFoundError:
                raise Changed(src) from None
            # A swap between the check and the rename would have moved a link, not its target.
            check_regular_at(inputs_fd, src.name, None)
        fsops.fsync_fd(inputs_fd)  # once for every file moved in
        job.out.mkdir()
        fsops.fsync_dir(job.dir)
        _tidy_returned(folders, group, src_fd)
    except (Changed, OSError) as e:
        # Marked first: should this not finish now, recovery puts the files back, not runs them.
        if not isinstance(e, Changed):
            _claim_trouble(e)
        with contextlib.suppress(OSError):
            put_back(folders, job, mark_first=True)
        return None
    finally:
        os.close(inputs_fd)
    _claim_trouble(None)
    return job


def _tidy_returned(folders: Folders, group: Group, src_fd: int) -> None:
    """Remove a returned job folder once its inputs are claimed: the daemon's own files from the
    failed attempt (error.txt, JOB.log), file-manager litter, then the folder.

    Works in the folder the claim opened (``src_fd``), so a link swapped in for it is never
    followed. When anything else is in it (a person's other files, or anything not a plain
    file: a link named ``error.txt`` is not one the daemon wrote), everything stays as it is.
    """
    if group.src_dir is None:
        return
    ours = {p.name for p in group.leftovers}
    try:
        present = os.listdir(src_fd)
    except OSError:
        return
    for n in present:
        if n not in ours and n not in names.OS_LITTER and not n.startswith("._"):
            return
        if not safe_dirs.is_file_at(src_fd, n):
            return
    with contextlib.suppress(OSError):
        for n in present:
            os.unlink(n, dir_fd=src_fd)
        with safe_dirs.opened(folders.inbox, group.src_dir.parent) as parent:
            os.rmdir(group.src_dir.name, dir_fd=parent)


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
        fd = os.open(theirs.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return moves.copied_whole_at(ours, fd, theirs.name)
    finally:
        os.close(fd)


def put_back(folders: Folders, job: Job, *, mark_first: bool = False) -> bool:
    """Move a job's inputs back into the inbox and drop the claim; False if that cannot be done now.

    The ``returning`` marker is written before the first file moves, so a crash part-way is
    finished by ``recover`` the same way. Nothing in the inbox is ever replaced: when a name
    was taken meanwhile, or the inbox is gone (share unmounted), the job stays claimed. The
    inbox folder is opened without following a link below the inbox: where a share user put
    a link (or a file) in place of ``inbox/REL``, it is refused with a warning and the files
    go back to the top of the inbox instead, where they are taken up as a fresh drop.
    """
    if mark_first:
        fsops.write_atomic(job.dir / RETURNING, b"")
    if not folders.inbox.is_dir():
        return False
    names = sorted(os.listdir(job.inputs)) if job.inputs.is_dir() else []
    try:
        back, _ = safe_dirs.open_or_top(
            folders.inbox, job.rel_dir, instead=f"putting job {job.name} back at the top of the inbox instead"
        )
    except OSError:
        return False
    try:
        if any(
            moves.exists_at(back, n) and not moves.copied_whole_at(job.inputs / n, back, n) for n in names
        ):
            return False
        if not mark_first:
            fsops.write_atomic(job.dir / RETURNING, b"")
        for n in names:
            if moves.exists_at(back, n):
                (job.inputs / n).unlink()  # its complete copy is already back
            else:
                moves.move_at(None, job.inputs / n, back, n)
    except OSError:
        return False
    finally:
        os.close(back)
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
