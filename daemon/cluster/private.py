"""What a killed daemon's private Ray leaves behind, found and ended at the next start.

A private Ray (``address = "local"``) stops with ``ray.shutdown()``. When the daemon is killed
(SIGKILL, a crash) its Ray head and workers exit on their own, but two of Ray's helper processes
(its dashboard and runtime-env agents) can stay behind for good. The daemon notes its private
Ray's temporary folder in the state folder; the next start ends every process that still has a
file open in it and removes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

MARK = "ray-private.json"


def note(state_dir: Path, temp_dir: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARK).write_text(json.dumps({"pid": os.getpid(), "temp_dir": temp_dir}) + "\n")


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
    """Processes with a file open under ``folder`` (Linux /proc; elsewhere none are found)."""
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path).startswith(folder + "/"):
                        found.append(int(entry.name))
                        break
    return found


def reap(state_dir: Path) -> list[int]:
    """End what the last daemon's private Ray left, unless that daemon still runs; the pids ended."""
    try:
        mark = json.loads((state_dir / MARK).read_text())
        pid, folder = int(mark["pid"]), str(mark["temp_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if pid != os.getpid() and _alive(pid):
        return []  # another daemon's Ray, still in use (it will fail to take the lock anyway)
    ended = []
    if folder.startswith("/") and len(folder) > 5:
        for stray in _holding(folder):
            with contextlib.suppress(OSError):
                os.kill(stray, signal.SIGKILL)
                ended.append(stray)
        shutil.rmtree(folder, ignore_errors=True)
    forget(state_dir)
    return ended
