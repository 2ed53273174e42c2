"""A real, private smbd for tests: loopback only, on a free port, every file it keeps in one folder.

Users reach the daemon's inbox through Samba; these tests drive the same path with the real
``smbclient``. Nothing here is a stand-in: ``SambaServer`` runs the distribution's smbd with
its own smb.conf, and uploads go through SMB2/3 into the folder the daemon watches.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path


class SambaUnavailable(Exception):
    """smbd or smbclient is missing, or smbd would not start here: the reason, for a skip message."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SambaServer:
    """``smbd --foreground`` serving ``share_path`` as ``[inbox]`` to guests on 127.0.0.1:port."""

    def __init__(self, root: Path, share_path: Path) -> None:
        self.root = root
        self.share_path = share_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.smbd = shutil.which("smbd") or next(
            (p for p in ("/usr/sbin/smbd", "/usr/local/sbin/smbd") if os.access(p, os.X_OK)), None
        )
        self.smbclient = shutil.which("smbclient")

    def _write_conf(self) -> Path:
        dirs = {
            name: self.root / name for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log")
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        user = getpass.getuser()
        conf = self.root / "smb.conf"
        conf.write_text(
            f"""[global]
  server role = standalone server
  smb ports = {self.port}
  bind interfaces only = yes
  interfaces = lo
  private dir = {dirs["private"]}
  lock directory = {dirs["lock"]}
  state directory = {dirs["state"]}
  cache directory = {dirs["cache"]}
  pid directory = {dirs["pid"]}
  ncalrpc dir = {dirs["ncalrpc"]}
  log file = {dirs["log"]}/smbd.log
  map to guest = Bad User
  guest account = {user}
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2
[inbox]
  path = {self.share_path}
  read only = no
  guest ok = yes
  force user = {user}
"""
        )
        return conf

    def start(self, timeout: float = 30.0) -> None:
        if self.smbd is None or self.smbclient is None:
            raise SambaUnavailable("smbd and smbclient are not installed (apt-get install samba smbclient)")
        conf = self._write_conf()
        self.out = open(self.root / "smbd.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.smbd, "--foreground", "--no-process-group", f"--configfile={conf}", "--debug-stdout"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its helper processes go with it in stop()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            ok = subprocess.run(self._client("ls"), capture_output=True, timeout=30)
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        log = (self.root / "smbd.out").read_bytes().decode(errors="replace")[-1500:]
        self.stop()
        raise SambaUnavailable(f"smbd did not start on 127.0.0.1:{self.port}: {log}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                # Only the process group this helper started: smbd and its own children.
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            self.proc = None
            self.out.close()

    def __enter__(self) -> SambaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the client side ------------------------------------------------------------------

    def _client(self, commands: str) -> list[str]:
        assert self.smbclient is not None
        return [self.smbclient, "//127.0.0.1/inbox", "-p", str(self.port), "-N", "-c", commands]

    def run(self, commands: str, timeout: float = 120) -> str:
        """Run smbclient commands (``put a b; rename b c``); raise with its output on failure."""
        done = subprocess.run(self._client(commands), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or "NT_STATUS_" in done.stdout + done.stderr:
            raise RuntimeError(f"smbclient {commands!r} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def put(self, local: Path, remote: str) -> None:
        self.run(f'put "{local}" "{remote}"')

    def slow_put(self, pieces: Iterable[tuple[bytes, float]], remote: str) -> threading.Thread:
        """Upload ``pieces`` (data, then a pause in seconds) as one SMB file, in the background.

        smbclient reads the upload from a pipe that is fed piece by piece, so the file stays
        open on the server for the whole upload, as with a real client on a slow link. smbclient
        sends what it has read in blocks of up to 16 MiB: a pause after a piece shows on the
        server as a file that stops growing. Join the thread; ``self.upload_error`` says how it went.
        """
        proc = subprocess.Popen(
            self._client(f'put /dev/stdin "{remote}"'),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.upload_error: str | None = "not finished"

        def feed() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                for data, pause in pieces:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                    time.sleep(pause)
                proc.stdin.close()
                out = proc.stdout.read().decode(errors="replace")
                rc = proc.wait(timeout=120)
                self.upload_error = None if rc == 0 and "NT_STATUS_" not in out else f"rc={rc}: {out}"
            except Exception as e:  # reported through upload_error
                proc.kill()
                self.upload_error = repr(e)

        thread = threading.Thread(target=feed, name="slow-smb-upload", daemon=True)
        thread.start()
        return thread
