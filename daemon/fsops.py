"""Crash-safe file operations: write aside, fsync, rename into place.

Within one filesystem a move is a single ``rename``: atomic, so a file is either in
its old place or its new one whatever happens. Across filesystems (a state folder on
another disk than the share) it becomes copy to a hidden temporary name beside the
target, fsync, rename, and only then remove the source: at every instant at least one
complete copy exists. Permission bits are never copied, because CIFS mounts refuse
``chmod`` and the target folder's own rules (setgid, umask) should apply anyway.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any


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


def _temp_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part."""
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


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
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _move_across(src, dst)
    fsync_dir(dst.parent)


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
