"""How the operator steers a running daemon: files in its state folder.

The state folder is the daemon's own (0700; see ``folders.trust``), so only its user and root
can write there, and no share user can forge a control. The commands write, the loop reads:

- ``paused.json``: ``i2vd pause`` writes it (since when, by whom), ``i2vd resume`` removes it.
  While it is there no new job starts; the jobs in progress finish. It lasts across restarts.
  The loop looks at it each step with one ``stat`` and reads it again only when it changed.
- ``requests/``: ``i2vd cancel NAME|JOB`` puts one small file there per request; the loop
  takes each one (reads, removes) and acts on it.

Every file is written aside, fsynced and renamed into place (``fsops.write_atomic``), and read
back as if a stranger had written it: a plain file owned by the daemon's user or root, small,
and of the expected shape; anything else is ignored with a warning, never followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.folders import fsops
from daemon.folders.trust import read_regular

PAUSE = "paused.json"
REQUESTS = "requests"
_CAP = 4096  # bytes: a control file is a line of JSON
_MAX_REQUESTS = 256  # taken per look; more wait for the next step
_NAME_CHARS = 64


class ControlError(Exception):
    """A control cannot be written (not the service user, no state folder); names the fix."""


@dataclass(frozen=True)
class Pause:
    since: str  # ISO 8601, local time with its offset
    by: str

    def as_status(self) -> dict[str, str]:
        return {"since": self.since, "by": self.by}


def invoking_user() -> str:
    """Who runs the command: the person behind sudo when there is one, else the process's user."""
    name = os.environ.get("SUDO_USER") or ""
    if not name:
        try:
            name = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            name = str(os.getuid())
    return _clean(name)


def _clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:_NAME_CHARS] or "?"


def _writable_state(state: Path, command: str) -> os.stat_result:
    try:
        st = os.stat(state)
    except OSError:
        raise ControlError(
            f"no state folder at {state}: start the daemon once (i2vd run), or check [paths] state"
        ) from None
    if not os.access(state, os.W_OK | os.X_OK):
        owner = _owner(st.st_uid)
        raise ControlError(
            f"only the service user or root can {command} (the state folder {state} is {owner}'s): "
            f"run it as sudo -u {owner} i2vd {command}"
        )
    return st


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _write(state_st: os.stat_result, path: Path, obj: dict[str, Any]) -> None:
    fsops.write_json_atomic(path, obj, private=True)
    if os.geteuid() == 0 and state_st.st_uid != 0:
        # Root writes for the operator: the file is the service user's, as the rest of its state.
        with contextlib.suppress(OSError):
            os.chown(path, state_st.st_uid, state_st.st_gid, follow_symlinks=False)


def pause(state: Path, by: str, now: datetime) -> tuple[Pause, bool]:
    """Pause taking new jobs. Returns the pause in force and whether it is new (an earlier pause
    keeps its time and author)."""
    st = _writable_state(state, "pause")
    current = read_pause(state)
    if current is not None:
        return current, False
    p = Pause(now.isoformat(timespec="seconds"), _clean(by))
    _write(st, state / PAUSE, {"since": p.since, "by": p.by})
    return p, True


def resume(state: Path) -> Pause | None:
    """Take new jobs again; returns the pause that was lifted (None: there was none)."""
    _writable_state(state, "resume")
    was = read_pause(state)
    try:
        os.unlink(state / PAUSE)
    except FileNotFoundError:
        return None
    fsops.fsync_dir(state)
    return was or Pause("?", "?")


def request_cancel(state: Path, target: str, by: str) -> None:
    """Ask the running daemon to cancel the job named ``target`` (NAME, folder/NAME or JOB)."""
    st = _writable_state(state, "cancel")
    requests = state / REQUESTS
    with contextlib.suppress(FileExistsError):
        requests.mkdir(mode=0o700)
    name = f"cancel-{datetime.now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}.json"
    _write(st, requests / name, {"cancel": target, "by": _clean(by)})


def read_trusted_json(path: Path, cap: int = _CAP) -> dict[str, Any] | None:
    """A JSON table the daemon keeps in its state, read as a stranger's; None when it is not one of ours."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
            raise ValueError("not a plain file of the daemon's user or root")
        data = read_regular(path, cap)
        if len(data) > cap:
            raise ValueError("too large")
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("not a table")
        return obj
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logs.get().warning("ignoring a control file that is not the daemon's", file=str(path), reason=str(e))
        return None


def read_pause(state: Path) -> Pause | None:
    obj = read_trusted_json(state / PAUSE)
    if obj is None:
        return None
    since, by = obj.get("since"), obj.get("by")
    return Pause(_clean(since) if isinstance(since, str) else "?", _clean(by) if isinstance(by, str) else "?")


class Controls:
    """The loop's side: whether a pause is in force, and the cancel requests to act on."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._pause_sig: tuple[int, int, int] | None = None
        self._pause: Pause | None = None
        self._requests_sig: tuple[int, int] | None = None

    def paused(self) -> Pause | None:
        """The pause in force; one ``stat`` when nothing changed."""
        try:
            st = os.lstat(self.state / PAUSE)
        except OSError:
            self._pause_sig = None
            self._pause = None
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != self._pause_sig:
            self._pause_sig = sig
            self._pause = read_pause(self.state)
        return self._pause

    def cancels(self) -> list[tuple[str, str]]:
        """(target, by) of every cancel request written since the last look; each is consumed."""
        folder = self.state / REQUESTS
        try:
            st = os.lstat(folder)
        except OSError:
            return []
        sig = (st.st_mtime_ns, st.st_ino)
        if sig == self._requests_sig or not stat.S_ISDIR(st.st_mode):
            return []
        found: list[tuple[str, str]] = []
        try:
            with os.scandir(folder) as it:
                entries = sorted(e.name for e in it if e.name.startswith("cancel-"))
        except OSError:
            return []
        # Nothing new until the folder changes; a folder changed within the last second may
        # change again within its timestamp's grain, so it is listed again meanwhile.
        if not entries and st.st_mtime < time.time() - 1:
            self._requests_sig = sig
        for name in entries[:_MAX_REQUESTS]:
            obj = read_trusted_json(folder / name)
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
            target = obj.get("cancel") if obj else None
            if isinstance(target, str) and target.strip():
                by = obj.get("by") if obj else None
                found.append((target.strip()[:512], _clean(by) if isinstance(by, str) else "?"))
        return found
