"""Crash-safe file operations: write aside, fsync, rename into place (moving files is ``moves``'s).

Within one filesystem a move is a single ``rename``: atomic, so a file is either in
its old place or its new one whatever happens. Across filesystems (a state folder on
another disk than the share) it becomes copy to a hidden temporary name beside the
target, fsync, rename, and only then remove the source: at every instant at least one
complete copy exists. Permission bits are never copied, because CIFS mounts refuse
``chmod`` and the target folder's own rules (setgid, umask) should apply anyway.

The ``*_at`` variants work inside folders opened once (see ``safe_dirs``), so a link a
share user swaps in for a folder is never followed; nothing here reads or writes through
a link at the last component either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import unicodedata
import uuid
from pathlib import Path
from typing import Any

# A folder opened to work in it. The daemon's own paths (the state folder, a configured base
# folder) may be links the operator made; anything below a shared folder is opened with
# NOFOLLOW_DIR, one component at a time (see ``safe_dirs``).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
NOFOLLOW_DIR = DIR_FLAGS | os.O_NOFOLLOW
# A file read or made here: never through a link, never blocking on a FIFO put in its place.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# The longest file name (in bytes) ext4, XFS, Btrfs, ZFS and SMB/NFS servers accept.
NAME_MAX = 255
_TEMP_SUFFIX_BYTES = len(".12345678.tmp") + 1  # plus the leading dot


def name_bytes(name: str) -> int:
    """Length of a file name on disk; names that are not valid UTF-8 round-trip via surrogateescape."""
    return len(os.fsencode(name))


def truncate_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` on disk, on a character boundary.

    Never splits a UTF-8 sequence, and never leaves a base letter without the combining
    accents that follow it (an NFD ``é`` is two characters), so the result is still a
    readable name in the same normalisation form.
    """
    if name_bytes(name) <= max_bytes:
        return name
    out, used = [], 0
    for ch in name:
        size = name_bytes(ch)
        if used + size > max_bytes:
            break
        out.append(ch)
        used += size
    cut = len(out)
    if cut < len(name) and unicodedata.combining(name[cut]):
        while out and unicodedata.combining(out[-1]):
            out.pop()
        if out:
            out.pop()  # the base letter whose accents did not fit
    return "".join(out)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable (the directory entry itself)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def fsync_fd(fd: int) -> None:
    """``fsync`` an open folder; some network filesystems refuse it, and the rename still happened."""
    with contextlib.suppress(OSError):
        os.fsync(fd)


def temp_prefix(target: Path | str) -> str:
    """How every temporary name for ``target`` starts: a dot (hidden, and ignored by the inbox
    scanner) and as much of the name as fits in NAME_MAX with the random suffix."""
    name = target if isinstance(target, str) else target.name
    return "." + truncate_name(name, NAME_MAX - _TEMP_SUFFIX_BYTES) + "."


def temp_name(target: Path | str) -> str:
    return f"{temp_prefix(target)}{uuid.uuid4().hex[:8]}.tmp"


def _temp_beside(target: Path) -> Path:
    return target.with_name(temp_name(target))


def remove_temps(target: Path) -> None:
    """Remove what a crash mid-write or mid-move left beside ``target`` (never ``target`` itself)."""
    try:
        fd = os.open(target.parent, DIR_FLAGS)
    except OSError:
        return
    try:
        remove_temps_at(fd, target.name)
    finally:
        os.close(fd)


def remove_temps_at(dir_fd: int, name: str) -> None:
    """``remove_temps`` for ``name`` in an open folder; a temporary folder's tree is removed
    without following any link in it."""
    prefix = temp_prefix(name)
    try:
        entries = list(os.scandir(dir_fd))
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(prefix) :]
        if entry.name.startswith(prefix) and len(rest) == 12 and rest.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.name, ignore_errors=True, dir_fd=dir_fd)
                else:
                    os.unlink(entry.name, dir_fd=dir_fd)


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def sweep_temps(folder: Path) -> int:
    """Remove every temporary file a kill -9 mid-write left in ``folder`` (the daemon's own folders
    only: status.json's, the share page's, the webhook spool's); returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def write_atomic(
    path: Path, data: bytes, *, durable: bool = True, private: bool = False, sync_folder: bool = True
) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    ``durable=False`` skips the fsyncs: still atomic for readers, but after a power cut the
    file may be its old version. Right for status files rewritten every second, whose
    fsyncs were most of the per-job overhead in a backlog. ``sync_folder=False`` fsyncs the
    file but not its folder: for several files written into one folder, whose caller fsyncs
    the folder once after the last (one fsync of a folder makes all its new names durable).
    ``private``: readable by the daemon's user only (0600) from the start, for files that hold
    secrets.
    """
    tmp = _temp_beside(path)
    try:
        # O_EXCL: a name a share user planted (a link to elsewhere) is never written through.
        with os.fdopen(os.open(tmp, CREATE_FLAGS, 0o600 if private else 0o666), "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_folder:
        fsync_dir(path.parent)


def write_unseen(path: Path, data: bytes) -> None:
    """Write ``data`` straight to ``path`` and fsync it, in a folder of the daemon's where no one
    can see a file half-written: a claim's ``out/``, published whole by one rename of the folder,
    or a claim folder just reserved, whose record recovery reads knowing a crash may have cut it
    short (and before which nothing was moved).

    ``write_atomic``'s temporary name, rename and fsync of the folder would protect no reader
    there, and only cost: a rename and an fsync per file, several per job in a backlog. The
    caller fsyncs the folder once, after its last file. A file of that name is replaced (filing tried again),
    never followed if it is a link.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# The files the daemon rewrites to say what it does (status.json, the share page) are padded with
# spaces to whole blocks of this size, with room to grow, so that a full disk cannot stop them.
PADDED_BLOCK = 4096
_PADDED_GROWTH = 1024
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def no_room(error: BaseException) -> bool:
    """Whether ``error``, or an error that caused it, says a disk or a quota is full."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return True
        e = e.__cause__ or e.__context__
    return False


def write_padded(path: Path, data: bytes) -> None:
    """Write a status file (JSON or HTML, where trailing spaces mean nothing) so that it can still
    be rewritten when the disk is full.

    Steps:
    1. pad ``data`` with spaces to whole ``PADDED_BLOCK``s, keeping room for it to grow a little;
    2. write it aside and rename it into place (``write_atomic``, without fsync: it is rewritten
       often, and the next version follows soon);
    3. when that fails for want of room, overwrite in place the blocks the file already holds, if
       the new text fits in them (a reader may then briefly see a mix of old and new); when it
       does not fit, or the file is not a plain file of ours, the error of step 2 is raised.
    """
    size = -(-(len(data) + _PADDED_GROWTH) // PADDED_BLOCK) * PADDED_BLOCK
    try:
        write_atomic(path, data + b" " * (size - len(data)), durable=False)
    except OSError as e:
        if not (no_room(e) and _overwrite_in_place(path, data)):
            raise


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Overwrite ``path``'s bytes with ``data`` padded to its present size; False if not done.

    Only a plain file of this user with one link is written: never through a symlink, never
    into a FIFO (no blocking), never into a file someone else put in its place, never into a
    file hard-linked elsewhere. The size stays, so no new block is needed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            return False
        if st.st_size < len(data):
            return False
        body = memoryview(data + b" " * (st.st_size - len(data)))
        done = 0
        while done < len(body):
            done += os.pwrite(fd, body[done:], done)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """Readable UTF-8 JSON; ASCII escapes instead when a value holds a file name that is not valid
    UTF-8 (an NFS client in a Latin-1 locale), so the file is still valid and round-trips exactly.

    ``indent=None``: one line, for files programs read many times a second (status.json); the
    json module encodes that in C, several times faster than indented JSON, which it encodes in Python.
    """
    try:
        data = json.dumps(obj, indent=indent, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        data = json.dumps(obj, indent=indent, ensure_ascii=True, default=str).encode()
    return data + b"\n"


def write_json_atomic(path: Path, obj: Any, *, durable: bool = True, private: bool = False) -> None:
    """``obj`` as JSON (``json_bytes``), written with ``write_atomic``."""
    write_atomic(path, json_bytes(obj), durable=durable, private=private)
