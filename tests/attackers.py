"""Real users for the attack tests: the daemon's own unprivileged account and a share user.

tests/e2e/test_attacks.py runs the daemon as a service account and every attack as a second
account that is only in the share group, as docs/security.md lays them out. Both are made here
with ``groupadd``/``useradd`` (so root is needed) and removed afterwards; neither is ever root,
because root passes every permission check and would prove nothing.

Processes start through ``setpriv`` (real uid, gid and the groups from /etc/group; for the
daemon also ``CAP_LEASE`` alone, as its unit grants). Where this machine's Python lives in a
folder other users may not enter (a pyenv under /root), the process first gets a private mount
namespace in which that folder is shown read-only and nothing else of its parent: the
interpreter becomes runnable, and no permission on the share changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("inbox", "outputs", "done", "failed")
TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "setpriv", "unshare", "mount", "umount")


def unavailable() -> str | None:
    """Why real users cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "making the service and share users needs root (CI runs as root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {' '.join(missing)} (Debian's passwd, util-linux and mount packages)"
    return None


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Accounts:
    """The service user (own primary group), the share group it is also in, and a share user."""

    service: Account
    attacker: Account
    share_group: str
    share_gid: int

    @classmethod
    def create(cls) -> Accounts:
        tag = secrets.token_hex(3)  # parallel test runs on one machine must not share accounts
        service, attacker, group = f"i2vdsvc{tag}", f"i2vdeve{tag}", f"i2vdshr{tag}"
        _run("groupadd", "--system", group)
        _run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "--groups", group, service)  # fmt: skip
        _run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "--groups", group, attacker)  # fmt: skip
        return cls(_account(service), _account(attacker), group, _gid(group))

    def remove(self) -> None:
        for account in (self.service, self.attacker):
            subprocess.run(["userdel", account.name], capture_output=True, check=False)
        subprocess.run(["groupdel", self.share_group], capture_output=True, check=False)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _account(name: str) -> Account:
    out = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout
    gid = subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True).stdout
    return Account(name, int(out), int(gid))


def _gid(group: str) -> int:
    out = subprocess.run(["getent", "group", group], capture_output=True, text=True, check=True).stdout
    return int(out.split(":")[2])


def hidden_ancestor(path: Path) -> Path | None:
    """The topmost folder above ``path`` that other users may not enter, or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def as_user(account: Account, argv: Sequence[str], *, holder: Path, daemon_caps: bool = False) -> list[str]:
    """The command line that runs ``argv`` as ``account`` (see the module docstring).

    ``holder`` is an empty folder of this test's own, used for a moment as a mount point.
    """
    caps = (
        ["--inh-caps=-all,+lease", "--ambient-caps=-all,+lease", "--bounding-set=-all,+lease"]
        if daemon_caps
        else ["--inh-caps=-all", "--bounding-set=-all"]
    )
    setpriv = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
               *caps, "--no-new-privs", "--"]  # fmt: skip
    prefix = Path(os.path.realpath(sys.base_prefix))
    hidden = hidden_ancestor(prefix)
    if hidden is None:
        return [*setpriv, *argv]
    p, h, d = (shlex.quote(os.fspath(x)) for x in (prefix, holder, hidden))
    script = (
        f"mount --bind {p} {h} && mount -t tmpfs -o mode=0755,size=1m i2vd-test {d}"
        f' && mkdir -p {p} && mount --bind -o ro {h} {p} && umount {h} && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation=private", "--", "sh", "-c", script, "sh", *setpriv, *argv]


# What an attack snippet starts with: it sets ``result``, which comes back as JSON.
_PRELUDE = """
import errno, json, os, sys
def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
result = None
"""


@dataclass
class Lab:
    """The folders of one installation, laid out as docs/security.md says, under ``base``.

    ``base/srv`` holds the four shared folders and the state; ``base/outside`` is what an
    attacker must never reach through the daemon (a secret only the service user may read, a
    public file, a folder of a valid pair); ``base/etc`` the config; ``base/home`` the
    service's home; ``base/cache`` its model cache.
    """

    base: Path
    accounts: Accounts
    token: str = field(default_factory=lambda: "SECRET-" + secrets.token_hex(16))

    @property
    def srv(self) -> Path:
        return self.base / "srv"

    @property
    def state(self) -> Path:
        return self.srv / ".i2vd"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    @property
    def secret(self) -> Path:
        return self.outside / "secret.txt"

    @property
    def config(self) -> Path:
        return self.base / "etc" / "config.toml"

    def folder(self, name: str) -> Path:
        return self.srv / name

    def make(self, png: bytes) -> None:
        svc, share = self.accounts.service, self.accounts.share_gid
        self.base.chmod(0o755)
        _mkdir(self.srv, svc.uid, svc.gid, 0o755)
        for name in SHARED:
            _mkdir(self.srv / name, svc.uid, share, 0o2775)
        # As install.sh makes it: no access for the group, setgid so job folders reach the share
        # in the share group.
        _mkdir(self.state, svc.uid, share, 0o2700)
        _mkdir(self.base / "etc", 0, 0, 0o755)
        _mkdir(self.base / "home", svc.uid, svc.gid, 0o700)
        _mkdir(self.base / "cache", svc.uid, svc.gid, 0o750)
        _mkdir(self.base / "holder", 0, 0, 0o700)
        _mkdir(self.outside, svc.uid, svc.gid, 0o755)
        self.plant_outside(self.outside, png)

    def plant_outside(self, folder: Path, png: bytes) -> None:
        """What must stay put: secrets (0600, the service's), a public file and a valid pair."""
        svc = self.accounts.service
        for name in ("secret.txt", "secret-claim.txt", "secret-record.txt"):
            _write(folder / name, f"{self.token}\n".encode(), svc.uid, svc.gid, 0o600)
        _write(folder / "public.txt", b"anyone may read this\n", svc.uid, svc.gid, 0o644)
        _write(folder / "page.html", b"<p>the operator's own page</p>\n", svc.uid, svc.gid, 0o644)
        _mkdir(folder / "pairs", svc.uid, svc.gid, 0o755)
        _write(folder / "pairs" / "cat.png", png, svc.uid, svc.gid, 0o644)
        _write(folder / "pairs" / "cat.txt", b"a cat that must stay here\n", svc.uid, svc.gid, 0o644)

    def run_as(
        self, account: Account, argv: Sequence[str], *, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        cmd = as_user(account, argv, holder=self.base / "holder")
        # umask 0002: what a share user makes is group-writable, as Samba's create and directory
        # masks make it (a folder only its maker may write would keep the daemon from moving files).
        kw.setdefault("umask", 0o002)
        return subprocess.run(cmd, capture_output=True, text=True, env=env or _plain_env(), **kw)

    def attack(self, code: str, **values: object) -> Any:
        """Run ``code`` (Python) as the share user; ``values`` are its variables; ``result`` comes back."""
        assigns = "".join(f"{k} = {v!r}\n" for k, v in values.items())
        program = _PRELUDE + assigns + code + "\nprint(json.dumps(result))\n"
        # On stdin: a prompt file of 64 KiB is more than one argument may hold.
        argv = [sys.executable, "-I", "-"]
        proc = self.run_as(self.accounts.attacker, argv, input=program, timeout=300)
        assert proc.returncode == 0, f"the attack itself broke: {proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def drop(self, rel: str, name: str, image: bytes, sidecar: bytes | str, ext: str = "txt") -> None:
        """The share user drops an image, then its prompt file, into ``inbox/rel``."""
        data = sidecar.encode() if isinstance(sidecar, str) else sidecar
        self.attack(
            "os.makedirs(folder, exist_ok=True)\n"
            "for fname, blob in ((image_name, image), (side_name, side)):\n"
            "    with open(os.path.join(folder, fname), 'wb') as f:\n"
            "        f.write(bytes.fromhex(blob))\n",
            folder=os.fspath(self.folder("inbox") / rel),
            image_name=f"{name}.png",
            side_name=f"{name}.{ext}",
            image=image.hex(),
            side=data.hex(),
        )

    def i2vd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """An ``i2vd`` command run by the operator as the service user."""
        argv = [sys.executable, "-m", "daemon.cli", *args, "--config", os.fspath(self.config)]
        return self.run_as(self.accounts.service, argv, env=daemon_env(self), timeout=timeout, cwd="/")


def _mkdir(path: Path, uid: int, gid: int, mode: int) -> None:
    path.mkdir(exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)


def _write(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    path.chmod(mode)


def _plain_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def daemon_env(lab: Lab) -> dict[str, str]:
    """What the unit gives the daemon: no I2VD_ variables, a home of its own, no model hub."""
    return {
        **_plain_env(),
        "HOME": os.fspath(lab.base / "home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.fspath(ROOT),  # the code under test, not an installed copy
    }


class Daemon:
    """``i2vd run`` as the service user (UMask 0002 and CAP_LEASE, as its unit), log read as it comes."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.proc: subprocess.Popen[str] | None = None
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.starts = 0

    def start(self, timeout: float = 600) -> None:
        argv = [sys.executable, "-m", "daemon.cli", "run", "--config", os.fspath(self.lab.config)]
        cmd = as_user(self.lab.accounts.service, argv, holder=self.lab.base / "holder", daemon_caps=True)
        mark = len(self.events)
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon_env(self.lab),
            cwd="/",
            umask=0o002,
        )
        self.starts += 1
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait_for("the daemon to start watching", lambda: self.find("watching", after=mark), timeout, self)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.raw.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    def find(self, event: str, *, after: int = 0) -> dict[str, Any] | None:
        return next((e for e in self.events[after:] if str(e.get("event", "")).startswith(event)), None)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def warnings(self, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[after:] if e.get("level") in ("warning", "error", "critical")]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def tail(self, lines: int = 15, width: int = 400) -> str:
        """The last log lines, each cut to ``width`` (a traceback of 1,000 frames is one line)."""
        return "".join(line[:width].rstrip("\n") + "\n" for line in self.raw[-lines:])


def wait_for(what: str, check: Callable[[], Any], timeout: float, daemon: Daemon | None = None) -> Any:
    """Poll ``check`` until it is truthy; fail naming ``what`` (and the daemon's last words)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if daemon is not None and not daemon.running:
            raise AssertionError(f"the daemon exited while waiting for {what}:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            tail = daemon.tail() if daemon is not None else ""
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(0.3)


Snapshot = dict[str, tuple[int, int, int, int, str]]


def snapshot(folder: Path) -> Snapshot:
    """Every entry below ``folder`` (never through a link): type and mode, owner, size, content hash."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if os.path.isfile(path) and not os.path.islink(path):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            found[os.path.relpath(path, folder)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, digest)
    return found


def files_holding(root: Path, needle: bytes, *, max_depth: int = 4096) -> set[str]:
    """Regular files below ``root`` (links not followed, at most ``max_depth`` down) containing ``needle``."""
    hits: set[str] = set()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if depth < max_depth:
                    stack.append((Path(entry.path), depth + 1))
            elif entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as f:
                    if needle in f.read():
                        hits.add(entry.path)
    return hits
