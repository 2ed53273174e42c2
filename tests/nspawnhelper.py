"""A real systemd for tests: a Debian root booted by ``systemd-nspawn``, commands run inside with nsenter.

The service is managed only through systemd, and hardened units fail at run time in ways
``systemd-analyze verify`` cannot see, so tests/e2e/test_systemd_boot.py installs and drives i2vd
under a real PID 1. Nothing here imitates systemd: ``DebianRoot`` builds a minimal Debian with
``debootstrap`` from Debian's archive (once, cached under ``CACHE`` by a version key), and
``Container`` boots a throw-away copy of it (an overlay whose upper layer is deleted afterwards).

Safety: systemd always runs with its own root file system here (never in a bare PID namespace,
whose tmpfiles clean-up would then empty this machine's /tmp), the host's folders are bound
read-only, and ``Container.stop`` always leaves nothing running and nothing mounted.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
# What the service and the tests need beyond minbase: Debian's own Python for the venv (the
# host's pyenv one is exactly what a hardened unit cannot use), kill(1) for ExecReload.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "ca-certificates")
# Bump to rebuild every cached root (a new package list already gets a new key).
ROOT_VERSION = 1
CACHE = Path(os.environ.get("I2VD_NSPAWN_CACHE", "/var/tmp/i2vd-nspawn"))
MIRROR = os.environ.get("I2VD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The environment of commands run inside: nothing of the host's leaks in.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where pip finds its wheels and index here: config files, bound read-only with what they name.
PIP_CONFIGS = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/root/.config/pip/pip.conf")
# A proxy's CA must be trusted inside too, or pip cannot reach the index.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class NspawnUnavailable(Exception):
    """This machine cannot build or boot the container: the reason, for a skip message."""


def missing_tools() -> list[str]:
    """The Debian packages whose programs are missing here (scripts/test.sh installs them as root)."""
    need = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
    return sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another worktree may be building the same root
        yield


def base_root() -> tuple[Path, float | None]:
    """The cached Debian root, built now if missing; and the seconds the build took (None: cached)."""
    key = hashlib.sha256(f"{SUITE} {ROOT_VERSION} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    done = CACHE / f"{SUITE}-{key}.complete"
    with _locked(CACHE / f"{SUITE}-{key}.lock"):
        if done.exists() and (root / "usr/lib/systemd/systemd").exists():
            return root, None
        partial = CACHE / f"{SUITE}-{key}.partial"
        if partial.exists():
            _remove_tree(partial)
        if root.exists():
            _remove_tree(root)
        started = time.monotonic()
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise NspawnUnavailable(f"debootstrap of Debian {SUITE} from {MIRROR} failed: {tail}")
        partial.rename(root)
        done.touch()
        return root, time.monotonic() - started


def _mounts_under(path: Path) -> list[str]:
    prefix = os.fspath(path.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def _remove_tree(path: Path) -> None:
    """rm -rf, refused while anything below is mounted (it would delete through the mount)."""
    mounted = _mounts_under(path)
    if mounted:
        raise RuntimeError(f"not removing {path}: still mounted there: {mounted}")
    shutil.rmtree(path)


def host_python_prefix() -> Path | None:
    """The host interpreter's installation when it lives under /root or /home (pyenv, conda)."""
    prefix = Path(os.path.realpath(sys.base_prefix))
    return prefix if prefix.parts[1:2] in (("root",), ("home",)) else None


def pip_binds() -> tuple[list[str], dict[str, str]]:
    """Read-only binds and environment that give pip inside what it has here (local wheels, CA)."""
    binds: list[str] = []
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    values: list[str] = list(env.values())
    for conf in PIP_CONFIGS:
        if os.path.isfile(conf):
            binds.append(conf)
            for line in Path(conf).read_text().splitlines():
                _, eq, value = line.partition("=")
                if eq:
                    values.extend(value.split())
    for value in values:
        path = value.removeprefix("file://")
        # An index folder named by its simple/ page is bound whole.
        if path.startswith("/") and os.path.exists(path):
            path = os.path.dirname(path.rstrip("/")) if path.rstrip("/").endswith("/simple") else path
            if path not in binds:
                binds.append(path)
    if os.path.isfile(CA_BUNDLE) and CA_BUNDLE not in binds:
        binds.append(CA_BUNDLE)
    return binds, env


class Container:
    """One booted container: a fresh overlay over the cached root, gone after ``stop``."""

    def __init__(self, base: Path, *, binds_ro: list[str], copy_source_to: str) -> None:
        self.base = base
        self.binds_ro = binds_ro
        self.source = copy_source_to
        self.name = f"i2vd-test-{uuid.uuid4().hex[:8]}"
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's systemd, as seen from here
        self.console: Path | None = None

    @property
    def merged(self) -> Path:
        assert self.dir is not None
        return self.dir / "root"

    def start(self, timeout: float = 180) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir()
        mount = subprocess.run(
            [
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={self.base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
                str(self.merged),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if mount.returncode != 0:
            raise NspawnUnavailable(f"cannot mount an overlay for the container: {mount.stderr.strip()}")
        self._copy_source()
        self.console = self.dir / "console.log"
        cmd = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.merged}",
            f"--machine={self.name}",
            # No machined and no unit on the host: this machine's PID 1 need not be systemd.
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            *(f"--bind-ro={p}" for p in self.binds_ro),
            "--boot",
        ]
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.pid:
            self.pid = self._init_pid()
            if self.proc.poll() is not None:
                raise NspawnUnavailable(f"systemd-nspawn exited at once: {self.console_tail()}")
            if time.monotonic() > deadline:
                tail = self.console_tail()
                raise NspawnUnavailable(f"no systemd in the container after {timeout:.0f} s: {tail}")
            time.sleep(0.2)
        state = self.run("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()
        if state not in ("running", "degraded"):
            raise NspawnUnavailable(f"the container's systemd says {state!r}: {self.console_tail()}")

    def _init_pid(self) -> int:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return 0

    def _copy_source(self) -> None:
        """The working tree (tracked and untracked files, not ignored ones), as a clone would be."""
        dest = self.merged / self.source.lstrip("/")
        dest.mkdir(parents=True)
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
        )
        if listed.returncode == 0:
            for rel in filter(None, listed.stdout.decode().split("\0")):
                src = ROOT / rel
                if src.is_file():  # a file deleted in the working tree is still listed
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest / rel)
        else:  # not a git checkout: everything but the bulky and generated folders
            shutil.copytree(
                ROOT,
                dest,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "__pycache__", "*.egg-info"),
            )

    def console_tail(self, lines: int = 8) -> str:
        text = self.console.read_text(errors="replace") if self.console and self.console.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def command(self, script: str, env: dict[str, str] | None = None) -> list[str]:
        environment = {"PATH": BASE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
        environment.update(env or {})
        return [
            "nsenter", f"--target={self.pid}", "--all",
            "env", "-i", *(f"{k}={v}" for k, v in environment.items()),
            "bash", "-c", script,
        ]  # fmt: skip

    def run(
        self,
        script: str,
        *,
        check: bool = True,
        timeout: float = 300,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash inside, as root; stdout and stderr as text."""
        proc = subprocess.run(self.command(script, env), input=input, capture_output=True, timeout=timeout)
        done = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the container, exit status {done.returncode}: {script}\n"
                f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
            )
        return done

    def popen(self, script: str) -> subprocess.Popen[str]:
        """Start ``script`` inside in the background; stdin and stdout are pipes (text)."""
        return subprocess.Popen(
            self.command(script),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> None:
        """Power the container off (kill it if it will not go), unmount, delete the copy."""
        if self.proc is not None and self.proc.poll() is None:
            # nspawn turns SIGTERM into a clean poweroff of the container.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.pid:
                    # SIGKILL to a PID namespace's init ends every process in it.
                    with suppress(OSError):
                        os.kill(self.pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.dir is None:
            return
        if _mounts_under(self.merged):
            subprocess.run(["umount", str(self.merged)], check=False)
        if _mounts_under(self.merged):
            # Busy (a process of ours still inside it): detach so nothing stays visible.
            subprocess.run(["umount", "--lazy", str(self.merged)], check=True)
        _remove_tree(self.dir)
        self.dir = None
        # nspawn leaves an empty mount-propagation folder behind on a host without systemd.
        propagate = Path("/run/systemd/nspawn/propagate") / self.name
        with suppress(OSError):
            propagate.rmdir()
