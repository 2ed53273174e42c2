"""Folders below the four shared folders, reached without ever following a link.

Share users can write ``inbox/``, ``outputs/``, ``done/`` and ``failed/`` (they take results
and drag failed jobs back), so any folder below them may be a link to elsewhere, or become one
at any instant. The base folders themselves are the operator's (configured paths: a link or a
mount point there is theirs to make) and are opened as they are. Below them each component is
opened with ``O_NOFOLLOW`` relative to the folder before it, and the work is then done through
the resulting descriptor (``dir_fd=`` of ``os.open``, ``os.mkdir``, ``os.rename``): what was
checked is what is used, with no window for a link to be swapped in between.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath

from daemon import logs
from daemon.folders import fsops

_BASE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
DIR_FLAGS = _BASE_FLAGS | os.O_NOFOLLOW
# A file read for people on the share: never through a link, never blocking on a FIFO.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotAFolder(OSError):
    """A link, or anything but a folder, where a folder below a shared folder should be."""

    def __init__(self, where: Path, reason: str) -> None:
        super().__init__(errno.ENOTDIR, reason, str(where))
        self.where = where
        self.reason = reason


def _parts(base: Path, rel: PurePath | str) -> list[str]:
    # Plain string splitting: this runs twice for every job filed.
    text = os.fspath(rel)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if text.startswith("/") or ".." in parts:
        raise NotAFolder(base / rel, "leads out of its folder")
    return parts


def open_under(base: Path, rel: PurePath | str = ".", *, create: bool = True) -> int:
    """An open descriptor of ``base/rel``; the caller closes it.

    ``base`` is opened as configured; every folder below it without following a link, and
    made where missing when ``create`` (``base`` too, as the daemon makes its folders at
    start). Raises NotAFolder (naming the folder) where a link or a file stands in the way,
    FileNotFoundError where a folder is missing and not ``create``.
    """
    parts = _parts(base, rel)
    try:
        fd = os.open(base, _BASE_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
        base.mkdir(parents=True, exist_ok=True)
        fd = os.open(base, _BASE_FLAGS)
    try:
        for i, name in enumerate(parts):
            child = _open_child(fd, name, create, lambda i=i: base.joinpath(*parts[: i + 1]))
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(fd: int, name: str, create: bool, where: Callable[[], Path]) -> int:
    for _ in range(3):  # made by us, or by someone else in the meantime: then open it
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                link = is_link_at(fd, name)
                raise NotAFolder(where(), "is a link" if link else "is not a folder") from None
            raise
    raise FileNotFoundError(errno.ENOENT, "keeps vanishing", str(where()))


@contextlib.contextmanager
def opened(base: Path, rel: PurePath | str = ".", *, create: bool = False) -> Iterator[int]:
    """``open_under`` as a context that closes the descriptor."""
    fd = open_under(base, rel, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def open_or_top(base: Path, rel: PurePath | str, *, instead: str) -> tuple[int, Path]:
    """``open_under(base, rel)`` made where missing, or, where a link (or a file) stands in the way,
    the top of ``base``: returns the descriptor and the folder it is, relative to ``base``.

    A refusal is logged as a warning naming the folder, why, and what is done ``instead``;
    the link and whatever it points at are left alone.
    """
    try:
        return open_under(base, rel, create=True), Path(rel)
    except NotAFolder as e:
        logs.get().warning(
            f"refused a folder in a shared folder: it {e.reason}; {instead} "
            "(make it a plain folder again to have it used)",
            folder=str(e.where),
        )
        return open_under(base, ".", create=False), Path(".")


def is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def is_dir_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is a folder (not a link to one) in the open folder."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def is_file_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is a plain file (not a link to one) in the open folder."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_file_at(dir_fd: int, name: str, limit: int) -> tuple[bytes, os.stat_result]:
    """At most ``limit`` bytes of the plain file ``name`` in the open folder, and its stat.

    OSError for a link (not followed), a FIFO (not waited on) or anything else not a plain file.
    """
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a plain file", name)
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def remove_temps_under(base: Path, rel: PurePath | str, name: str) -> None:
    """``fsops.remove_temps`` for ``base/rel/name``, following no link below ``base``.

    Where ``rel`` is refused (a link), the job was filed at the top of ``base`` (see
    ``open_or_top``), and so were its temporaries: those are removed there.
    """
    try:
        with opened(base, rel) as fd:
            fsops.remove_temps_at(fd, name)
    except NotAFolder:
        with contextlib.suppress(OSError), opened(base) as fd:
            fsops.remove_temps_at(fd, name)
    except OSError:
        pass
