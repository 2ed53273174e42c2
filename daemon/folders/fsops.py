"""Crash-safe file operations: write aside, fsync, rename into place.

Within one filesystem a move is a single ``rename``: atomic, so a file is either in
its old place or its new one whatever happens. Across filesystems (a state folder on
another disk than the share) it becomes copy to a hidden temporary name beside the
target, fsync, rename, and only then remove the source: at every instant at least one
complete copy exists. Permission bits are never copied, because CIFS mounts refuse
``chmod`` and the target folder's own rules (setgid, umask) should apply anyway.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import unicodedata
import uuid
from pathlib import Path
from typing import Any

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
        os.fsync(fd)
    except OSError:
        # Some network filesystems refuse fsync on directories; the rename still happened.
        pass
    finally:
        os.close(fd)


def temp_prefix(target: Path) -> str:
    """How every temporary name for ``target`` starts: a dot (hidden, and ignored by the inbox
    scanner) and as much of the name as fits in NAME_MAX with the random suffix."""
    return "." + truncate_name(target.name, NAME_MAX - _TEMP_SUFFIX_BYTES) + "."


def _temp_beside(target: Path) -> Path:
    return target.with_name(f"{temp_prefix(target)}{uuid.uuid4().hex[:8]}.tmp")


def remove_temps(target: Path) -> None:
    """Remove what a crash mid-write or mid-move left beside ``target`` (never ``target`` itself)."""
    prefix = temp_prefix(target)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(prefix) :]
        if entry.name.startswith(prefix) and len(rest) == 12 and rest.endswith(".tmp"):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


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


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    ``durable=False`` skips the fsyncs: still atomic for readers, but after a power cut the
    file may be its old version. Right for status files rewritten every second, whose
    fsyncs were most of the per-job overhead in a backlog.
    """
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, *, durable: bool = True, indent: int | None = 2) -> None:
    """Readable UTF-8 JSON; ASCII escapes instead when a value holds a file name that is not valid
    UTF-8 (an NFS client in a Latin-1 locale), so the file is still valid and round-trips exactly.

    ``indent=None``: one line, for files programs read many times a second (status.json); the
    json module encodes that in C, several times faster than indented JSON, which it encodes in Python.
    """
    try:
        data = json.dumps(obj, indent=indent, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        data = json.dumps(obj, indent=indent, ensure_ascii=True, default=str).encode()
    write_atomic(path, data + b"\n", durable=durable)


def _copy_file_synced(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())


def _copy_tree_synced(src: Path, dst: Path) -> None:
    dst.mkdir()
    for entry in os.scandir(src):
        s, d = Path(entry.path), dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            _copy_tree_synced(s, d)
        elif entry.is_file(follow_symlinks=False):
            _copy_file_synced(s, d)
    fsync_dir(dst)


def move(src: Path, dst: Path) -> None:
    """Move a file or folder to ``dst``, which must not exist; atomic within one filesystem.

    Raises FileNotFoundError when ``src`` is gone (someone else took it) and
    FileExistsError when ``dst`` is taken.
    """
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "target exists", str(dst))
    try:
        _rename_noreplace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _move_across(src, dst)
    fsync_dir(dst.parent)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
try:
    _renameat2: Any = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # not glibc >= 2.28: the exists() check above is all we have
    _renameat2 = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails instead of replacing a file that appeared at ``dst`` meanwhile (a user
    dropping a file of the same name into the inbox while a job is put back)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
        # This filesystem does not take the flag (some network ones): plain rename.
    os.rename(src, dst)


def _move_across(src: Path, dst: Path) -> None:
    tmp = _temp_beside(dst)
    try:
        if src.is_dir() and not src.is_symlink():
            _copy_tree_synced(src, tmp)
        else:
            _copy_file_synced(src, tmp)
        os.rename(tmp, dst)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    # Only now that a complete, durable copy is in place does the original go.
    if src.is_dir() and not src.is_symlink():
        shutil.rmtree(src)
    else:
        src.unlink()
