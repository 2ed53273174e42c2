"""Moving a job's files and folders crash-safely: one ``rename`` within a filesystem, else copy
aside, fsync, rename, and only then remove the source (see ``fsops`` for the rules both keep).

The ``*_at`` variants work inside folders opened once (see ``safe_dirs``), so a link a share
user swaps in for a folder is never followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from daemon.folders.fsops import CREATE_FLAGS, DIR_FLAGS, NOFOLLOW_DIR, READ_FLAGS, fsync_fd, temp_name


def _copy_file_at(src_fd: int | None, src: str | Path, dst_fd: int, dst: str) -> os.stat_result:
    """Copy a plain file to a new name in ``dst_fd`` and fsync it; return the source's stat.
    ELOOP or EINVAL when the source is a link or anything but a plain file (nothing is read
    through it)."""
    fin = os.open(src, READ_FLAGS, dir_fd=src_fd)
    try:
        st = os.fstat(fin)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a plain file", str(src))
        fout = os.open(dst, CREATE_FLAGS, 0o666, dir_fd=dst_fd)
        with open(fin, "rb", closefd=False) as r, open(fout, "wb") as w:
            shutil.copyfileobj(r, w, 1024 * 1024)
            w.flush()
            os.fsync(fout)
        return st
    finally:
        os.close(fin)


def _copy_tree_at(src_fd: int, dst_fd: int) -> None:
    """Copy the plain files and folders of one open folder into another (links and others are
    left out, as a share user's link is never ours to follow); each new folder is fsynced."""
    for entry in list(os.scandir(src_fd)):
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(entry.name, dir_fd=dst_fd)
            s = os.open(entry.name, NOFOLLOW_DIR, dir_fd=src_fd)
            try:
                d = os.open(entry.name, NOFOLLOW_DIR, dir_fd=dst_fd)
                try:
                    _copy_tree_at(s, d)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        elif entry.is_file(follow_symlinks=False):
            _copy_file_at(src_fd, entry.name, dst_fd, entry.name)
    fsync_fd(dst_fd)


def _copy_tree_synced(src: Path, dst: Path) -> None:
    """Copy the folder ``src`` to the new folder ``dst`` (its files fsynced)."""
    dst.mkdir()
    s = os.open(src, NOFOLLOW_DIR)
    try:
        d = os.open(dst, NOFOLLOW_DIR)
        try:
            _copy_tree_at(s, d)
        finally:
            os.close(d)
    finally:
        os.close(s)


def exists_at(dir_fd: int | None, name: str | Path) -> bool:
    """Whether ``name`` is taken in ``dir_fd`` by anything, a dangling link included."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def move(src: Path, dst: Path) -> None:
    """Move a file or folder to ``dst``, which must not exist; atomic within one filesystem.

    Raises FileNotFoundError when ``src`` is gone (someone else took it) and
    FileExistsError when ``dst`` is taken. For paths the daemon owns (its state folder);
    below a shared folder use ``move_at`` with folders opened by ``safe_dirs``.
    """
    dst_fd = os.open(dst.parent, DIR_FLAGS)
    try:
        move_at(None, src, dst_fd, dst.name)
    finally:
        os.close(dst_fd)


def move_at(src_fd: int | None, src: str | Path, dst_fd: int, dst: str, *, sync: bool = True) -> None:
    """Move ``src`` (relative to the open folder ``src_fd``, or a path when None) to the name
    ``dst`` in the open folder ``dst_fd``, which must not exist there.

    Nothing is looked up by path after the folders were opened, so a link swapped in for a
    folder meanwhile changes nothing. Across filesystems: copy beside ``dst``, fsync, rename
    without replacing, and only then remove the source. Raises as ``move`` does. ``sync=False``
    leaves the fsync of ``dst_fd`` to the caller, who moves several names into it and then
    fsyncs it once (a move across filesystems still fsyncs it before the source goes).
    """
    if exists_at(dst_fd, dst):
        raise FileExistsError(errno.EEXIST, "target exists", dst)
    try:
        rename_noreplace_at(src_fd, src, dst_fd, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _move_across(src_fd, src, dst_fd, dst)
        return  # fsynced there, before the source went
    if sync:
        fsync_fd(dst_fd)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
try:
    _renameat2: Any = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # not glibc >= 2.28: the exists check in move_at is all we have
    _renameat2 = None


def rename_noreplace_at(src_fd: int | None, src: str | Path, dst_fd: int | None, dst: str | Path) -> None:
    """rename(2) that fails instead of replacing a file that appeared at ``dst`` meanwhile (a user
    dropping a file of the same name into the inbox while a job is put back); each name is
    relative to its open folder, or a path when that is None."""
    if _renameat2 is not None:
        a = _AT_FDCWD if src_fd is None else src_fd
        b = _AT_FDCWD if dst_fd is None else dst_fd
        if _renameat2(a, os.fsencode(src), b, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
        # This filesystem does not take the flag (some network ones): plain rename.
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _move_across(src_fd: int | None, src: str | Path, dst_fd: int, dst: str) -> None:
    tmp = temp_name(dst)
    st = os.stat(src, dir_fd=src_fd, follow_symlinks=False)
    is_dir = stat.S_ISDIR(st.st_mode)
    try:
        if is_dir:
            os.mkdir(tmp, dir_fd=dst_fd)
            s = os.open(src, NOFOLLOW_DIR, dir_fd=src_fd)
            try:
                d = os.open(tmp, NOFOLLOW_DIR, dir_fd=dst_fd)
                try:
                    _copy_tree_at(s, d)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        else:
            st = _copy_file_at(src_fd, src, dst_fd, tmp)
        rename_noreplace_at(dst_fd, tmp, dst_fd, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            if is_dir:
                shutil.rmtree(tmp, ignore_errors=True, dir_fd=dst_fd)
            else:
                os.unlink(tmp, dir_fd=dst_fd)
        raise
    fsync_fd(dst_fd)
    # Only now that a complete, durable copy is in place does the original go.
    if is_dir:
        shutil.rmtree(src, dir_fd=src_fd)
        return
    now = os.stat(src, dir_fd=src_fd, follow_symlinks=False)
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        os.unlink(src, dir_fd=src_fd)
    # Otherwise someone put a new file of that name there meanwhile (an inbox is shared): theirs.


def copied_whole_at(ours: Path, dir_fd: int, name: str) -> bool:
    """Whether ``name`` in the open folder is the complete copy of ``ours`` (a file or a folder)
    that a move across filesystems renamed into place before a crash stopped it removing
    ``ours``: on another filesystem, the same plain files holding the same bytes.

    Anything else there (a share user's own folder or file of that name) is not; nothing is
    read through a link.
    """
    try:
        a = os.lstat(ours)
        b = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    if a.st_dev == b.st_dev:
        return False  # one filesystem: the rename was atomic, so this is not our copy
    try:
        if stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode):
            return _same_file_at(None, ours, dir_fd, name)
        if stat.S_ISDIR(a.st_mode) and stat.S_ISDIR(b.st_mode):
            fa = os.open(ours, NOFOLLOW_DIR)
            try:
                fb = os.open(name, NOFOLLOW_DIR, dir_fd=dir_fd)
                try:
                    return _same_tree_at(fa, fb)
                finally:
                    os.close(fb)
            finally:
                os.close(fa)
    except OSError:
        pass
    return False


def _same_tree_at(fa: int, fb: int) -> bool:
    mine = {e.name: e for e in os.scandir(fa)}
    theirs = {e.name: e for e in os.scandir(fb)}
    if mine.keys() != theirs.keys():
        return False
    for n, e in mine.items():
        if e.is_dir(follow_symlinks=False) and theirs[n].is_dir(follow_symlinks=False):
            sa = os.open(n, NOFOLLOW_DIR, dir_fd=fa)
            try:
                sb = os.open(n, NOFOLLOW_DIR, dir_fd=fb)
                try:
                    if not _same_tree_at(sa, sb):
                        return False
                finally:
                    os.close(sb)
            finally:
                os.close(sa)
        elif not (e.is_file(follow_symlinks=False) and _same_file_at(fa, n, fb, n)):
            return False
    return True


def _same_file_at(fa: int | None, a: str | Path, fb: int, b: str) -> bool:
    ra = os.open(a, READ_FLAGS, dir_fd=fa)
    try:
        rb = os.open(b, READ_FLAGS, dir_fd=fb)
        try:
            sa, sb = os.fstat(ra), os.fstat(rb)
            if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)) or sa.st_size != sb.st_size:
                return False
            while True:
                x, y = os.read(ra, 1 << 20), os.read(rb, 1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
        finally:
            os.close(rb)
    finally:
        os.close(ra)
