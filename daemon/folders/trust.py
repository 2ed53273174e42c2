"""What the daemon may believe: its state folder and its config, and files a stranger may have placed.

The state folder decides what the daemon moves, which processes it ends and where it sends
notices; the config decides the rest. So both must be writable by the daemon's own user (or
root) alone, and so must every folder above them: whoever can write a folder can rename what
is in it away and put their own in its place, unless the folder is sticky (``/tmp``). The
daemon refuses to start otherwise, with one line naming the fix (``Untrusted``).

Files a share user may have put in place are read with ``read_regular``: a plain file only,
never through a link, never a FIFO that would hang the reader.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from daemon import logs

# The state folder and the folders the daemon makes in it: only its own user may enter them.
PRIVATE_MODE = 0o700


class Untrusted(Exception):
    """The state folder or the config can be changed by someone else; the message names the fix."""


class NotRegular(OSError):
    """A file that is a link, a FIFO, a device or a socket where a plain file was expected."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _trusted(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _writers(st: os.stat_result) -> str | None:
    """Who besides the owner can write what ``st`` describes ("group G", "everyone"), or None."""
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    if st.st_mode & stat.S_IWGRP:
        return f"group {_group(st.st_gid)}"
    return None


def _ancestors(path: Path) -> list[Path]:
    """Every folder above ``path``, both as written and with links resolved, nearest first."""
    seen: list[Path] = []
    for p in (*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents):
        if p not in seen:
            seen.append(p)
    return seen


def replaceable(path: Path, what: str) -> str | None:
    """Why someone else could rename ``path`` away and put their own in its place, or None.

    Checks every folder up to ``/``: each must belong to the daemon's user or root, and be
    writable by no one else unless it is sticky.
    """
    me = user_name(os.geteuid())
    keepers = me if os.geteuid() == 0 else f"{me} or root"
    for folder in _ancestors(path):
        try:
            st = os.lstat(folder)
        except OSError as e:
            return f"cannot check {folder}, which holds {what} {path}: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            continue  # only its folder can change it, and where it leads is on the resolved path
        if not _trusted(st.st_uid):
            return (
                f"{folder} belongs to user {user_name(st.st_uid)}, who could replace {what} {path} "
                "inside it; "
                f"fix: chown {me} {folder} (or keep {what} in a folder only {keepers} can change)"
            )
        writers = _writers(st)
        if writers is not None and not st.st_mode & stat.S_ISVTX:
            return (
                f"{folder} can be written by {writers}, who could replace {what} {path} inside it; "
                f"fix: chmod go-w {folder} (or keep {what} in a folder only {keepers} can change)"
            )
    return None


def secure_state(state: Path) -> None:
    """Make the state folder private to the daemon's user, or raise Untrusted naming the fix.

    Steps:
    1. create it 0700 when missing, and any missing folder above it 0755 (not the service's
       group-writable umask: a folder others can write would let them replace it);
    2. refuse one that belongs to another user, or that someone else can write and the
       daemon cannot tighten;
    3. tighten one of the daemon's own that others may enter to 0700, and say so once;
    4. refuse when a folder above it lets someone else replace it.
    """
    me = user_name(os.geteuid())
    fix = f"chown {me} {state} && chmod 700 {state}"
    try:
        for folder in reversed([p for p in state.parents if not os.path.lexists(p)]):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o755)
        with contextlib.suppress(FileExistsError):
            state.mkdir(mode=PRIVATE_MODE)
        st = os.stat(state)
    except OSError as e:
        raise Untrusted(
            f"cannot make the state folder {state}: {e.strerror}; "
            f"fix: mkdir -p -m 700 {state} && chown {me} {state}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"the state folder {state} is not a folder; fix: remove it or set [paths] state")
    if not _trusted(st.st_uid):
        raise Untrusted(
            f"the state folder {state} belongs to user {user_name(st.st_uid)}, not to {me} who runs "
            f"the daemon; fix: {fix}"
        )
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        try:
            os.chmod(state, PRIVATE_MODE)
            now = os.stat(state)
        except OSError:
            now = st
        if not now.st_mode & 0o077:
            logs.get().warning(
                "the state folder was open to other users; made it private to the daemon's user",
                folder=str(state),
                was=oct(stat.S_IMODE(st.st_mode)),
                now=oct(PRIVATE_MODE),
            )
        st = now
    if _writers(st) is not None:
        # Not ours to tighten, or a filesystem that ignores chmod (a CIFS mount's dir_mode).
        raise Untrusted(
            f"the state folder {state} can be written by {_writers(st)}; fix: {fix} "
            "(on a network share that ignores chmod, set [paths] state to a local folder)"
        )
    problem = replaceable(state, "the state folder")
    if problem is not None:
        raise Untrusted(problem)


def check_config(path: Path) -> None:
    """Raise Untrusted (naming the fix) when someone else could change the config in use."""
    me = user_name(os.geteuid())
    try:
        st = os.stat(path)
    except OSError as e:
        raise Untrusted(f"cannot check the config {path}: {e.strerror}") from None
    fix = f"chown root:{_group(os.getegid())} {path} && chmod 640 {path}"
    if not _trusted(st.st_uid):
        raise Untrusted(
            f"the config {path} belongs to user {user_name(st.st_uid)}, not to {me} who runs the daemon "
            f"or to root; fix: {fix}"
        )
    writers = _writers(st)
    if writers is not None:
        raise Untrusted(f"the config {path} can be written by {writers}; fix: chmod go-w {path}")
    problem = replaceable(path, "the config")
    if problem is not None:
        raise Untrusted(problem)


def config_exposed(path: Path) -> str | None:
    """Why a config holding secrets can be read by more than the daemon's user and group, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_mode & stat.S_IROTH:
        who = "everyone"
    elif st.st_mode & stat.S_IRGRP and st.st_gid not in (os.getegid(), 0):
        who = f"group {_group(st.st_gid)}"
    else:
        return None
    return (
        f"the config {path} holds secrets (webhook URLs) and can be read by {who}; "
        f"fix: chown root:{_group(os.getegid())} {path} && chmod 640 {path}"
    )


def read_regular(path: Path, cap: int) -> bytes:
    """Up to ``cap + 1`` bytes of the plain file ``path``, never through a link.

    Raises NotRegular for a link, FIFO, device or socket (a FIFO is opened without blocking,
    so a share user's FIFO cannot hang the daemon), IsADirectoryError for a folder, and the
    usual OSError otherwise.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last part of the path is a link
            raise NotRegular(e.errno, "a link, not a plain file", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(0, "not a plain file", str(path))
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as f:
            # One buffer the size the file has (read(n) reserves n bytes up front, and joined
            # chunks would hold the file twice), then on up to the cap should it have grown.
            want = min(st.st_size, cap) + 1
            data = f.read(want)
            if len(data) == want and want <= cap:
                data += f.read(cap + 1 - want)
        return data
    finally:
        os.close(fd)
