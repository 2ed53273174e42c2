"""What a killed daemon's private Ray leaves behind, found and ended at the next start.

A private Ray (``address = "local"``) stops with ``ray.shutdown()``. When the daemon is killed
(SIGKILL, a crash) its Ray head and workers exit on their own, but two of Ray's helper processes
(its dashboard and runtime-env agents) can stay behind for good. The daemon gives its private
Ray a folder of its own (``make``) and notes it in the state folder; the next start ends every
process of the daemon's user that still has a file open in it and removes the folder.

The note is read back as if a stranger wrote it: only a folder this module made (its name,
owned by the daemon's user, private, not a link, in a folder no one else can rename it out of)
is ever emptied, and only the daemon's own processes are signalled. Anything else is logged and
the note dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from daemon import logs
from daemon.folders import trust

MARK = "ray-private.json"
PREFIX = "i2vd-ray-"
# What ``tempfile.mkdtemp(prefix=PREFIX)`` names a folder: eight of its random characters.
_MADE_BY_US = re.compile(re.escape(PREFIX) + r"[a-z0-9_]{8}")
# Ray makes the folder it is given world-writable (0777) for other users' sessions; it gets one
# inside the private folder, so nobody else can reach it.
_RAY_DIR = "ray"


def make(state_dir: Path) -> Path:
    """A new private folder (0700) for a private Ray, noted in the state; Ray's own folder is ``ray_dir``."""
    trust.secure_state(state_dir)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    fd = os.open(state_dir / MARK, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "temp_dir": str(folder)}) + "\n")
    return folder


def ray_dir(folder: Path) -> str:
    """The ``_temp_dir`` to give ``ray.init`` for a folder from ``make``."""
    return str(folder / _RAY_DIR)


def remove(state_dir: Path, folder: Path) -> None:
    """Remove a private Ray's folder after ``ray.shutdown()``, then its note."""
    shutil.rmtree(folder, ignore_errors=True)
    forget(state_dir)


def forget(state_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (state_dir / MARK).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holding(folder: str) -> list[int]:
    """The daemon user's processes with a file open under ``folder`` (Linux /proc; elsewhere none)."""
    found = []
    me = os.geteuid()
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry.path).st_uid != me:
                continue  # another user's process: never ours to end
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path).startswith(folder + "/"):
                        found.append(int(entry.name))
                        break
    return found


def _read_mark(state_dir: Path) -> tuple[int, str] | None:
    """(pid, folder) from the note, if it is a plain file of the daemon's user holding both."""
    path = state_dir / MARK
    try:
        if os.lstat(path).st_uid != os.geteuid():
            raise ValueError("it belongs to another user")
        mark = json.loads(trust.read_regular(path, 4096))
        pid, folder = mark["pid"], mark["temp_dir"]
        if not isinstance(pid, int) or not isinstance(folder, str):
            raise ValueError("pid or temp_dir has the wrong type")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logs.get().warning(
            "ignored a private Ray note that is not the daemon's", file=str(path), error=str(e)
        )
        forget(state_dir)
        return None
    return pid, folder


def _made_by_us(folder: str) -> str | None:
    """Why ``folder`` is not one ``make`` created for this user, or None when it is."""
    if not os.path.isabs(folder) or os.path.realpath(folder) != os.path.normpath(folder):
        return "not an absolute path free of links"
    if not _MADE_BY_US.fullmatch(os.path.basename(folder)):
        return "not named as the daemon names its Ray folders"
    try:
        st = os.lstat(folder)
    except OSError as e:
        return e.strerror
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        return "not a private folder of the daemon's user"
    return trust.replaceable(Path(folder), "the folder")


def reap(state_dir: Path) -> list[int]:
    """End what the last daemon's private Ray left, unless that daemon still runs; the pids ended."""
    found = _read_mark(state_dir)
    if found is None:
        return []
    pid, folder = found
    if pid != os.getpid() and _alive(pid):
        return []  # another daemon's Ray, still in use (it will fail to take the lock anyway)
    problem = _made_by_us(folder)
    if problem is not None:
        logs.get().warning(
            "ignored a private Ray note naming a folder the daemon did not make",
            folder=folder,
            problem=problem,
        )
        forget(state_dir)
        return []
    ended = []
    for stray in _holding(folder):
        with contextlib.suppress(OSError):
            os.kill(stray, signal.SIGKILL)
            ended.append(stray)
    shutil.rmtree(folder, ignore_errors=True)
    forget(state_dir)
    return ended
