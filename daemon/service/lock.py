"""One daemon per set of folders: an exclusive lock on a file in the state folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from daemon.folders.names import LOCK_FILE


class DaemonLocked(Exception):
    """Another daemon already serves these folders."""


def take_lock(state: Path) -> IO[str]:
    """Hold the lock (until the returned file is closed); DaemonLocked names the holder."""
    path = state / LOCK_FILE
    # Never through a link: the lock file is truncated, which must not reach any other file.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DaemonLocked(f"cannot take the lock {path}: {e.strerror}; remove it if no i2vd runs") from None
    f = os.fdopen(fd, "r+")  # held open for the whole run: it is the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(100).partition("\n")[0].strip() or "another process"
        f.close()
        raise DaemonLocked(
            f"another i2vd ({holder}) is already running on these folders (lock {path}); "
            "run one daemon per set of folders"
        ) from None
    f.truncate(0)
    # Straight to the file, not through the buffer: on a full disk the write fails here and
    # leaves nothing to fail again at close. The pid only names the holder; the lock is what
    # counts, and a daemon must start on a full disk (to say so and wait).
    with contextlib.suppress(OSError):
        os.write(f.fileno(), f"pid {os.getpid()}\n".encode())
    return f


def lock_held(state: Path) -> bool:
    """Whether some process holds the lock now (for ``i2vd status``)."""
    try:
        with os.fdopen(os.open(state / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return False
