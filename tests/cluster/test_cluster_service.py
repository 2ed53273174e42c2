"""``i2vd run`` and ``i2vd check`` with a private Ray, as users and systemd run them.

Real ``i2vd`` processes with ``[cluster] backend = "ray"`` and ``address = "local"`` (workers on
CPUs, the stub model sleeping like a GPU), real signals: systemd stops a service with SIGTERM,
and Ctrl-C is SIGINT. Stops behave as with one GPU (first signal: the jobs on the workers
finish; second: they are interrupted and their files go back to the inbox; exit 0 either way),
and nothing of the daemon's Ray outlives it. While it runs, its Ray listens on loopback only
and its token is the daemon's alone. Jobs arrive with the shipped ``[watch]`` values.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from tests.helpers import write_config

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

from tests.rayhelper import (  # noqa: E402
    alive,
    as_users_run_it,
    drop,
    inbox_digests,
    ray_processes,
    records,
    wait_for,
)

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "daemon.cli"]
# Two workers on this machine's CPUs: one job each at a time.
CPU_WORKERS = {"backend": "ray", "address": "local", "gpus_per_worker": 0, "cpus_per_worker": 1}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# What Ray printed when its own handler, not the daemon's, took a SIGTERM.
RAYS_HANDLER = "SIGTERM received"


class Daemon:
    """``i2vd run`` in its own process, its log (stderr) in a file, and the processes it started."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.home = tmp_path / "home"  # a HOME of its own: nothing may land in the user's ~/.ray
        self.home.mkdir()
        self.stderr = tmp_path / "run.log"
        self.settings = load_settings(config)
        env = {**as_users_run_it(), "HOME": str(self.home)}
        with self.stderr.open("wb") as err:
            # A session of its own, as under systemd or in a terminal: Ctrl-C reaches the group.
            self.proc = subprocess.Popen(
                [*CLI, "run", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        self.started: list[Any] = []
        self.ray_before = ray_processes()  # those of other tests of this run, still ending

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def events(self) -> list[str]:
        found = []
        for line in self.log().splitlines():
            try:
                found.append(json.loads(line)["event"])
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def wait_until_watching(self) -> None:
        wait_for(
            lambda: "watching" in self.events() or self.proc.poll() is not None, 240, "the daemon to start"
        )
        assert self.proc.poll() is None, self.log()[-3000:]
        # Everything the daemon started (Ray's GCS, raylet, agents and workers): none may outlive it.
        self.started = psutil.Process(self.proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in self.started), "no Ray under the daemon"

    def in_flight(self) -> int:
        try:
            state = json.loads((self.settings.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return 0
        return sum(1 for r in state.get("in_flight", []) if r.get("worker") and r.get("step"))

    def stop(self, *signals: signal.Signals, between: str = "") -> int:
        """Send ``signals`` (after the first, once the log shows ``between``); the exit status.

        SIGTERM goes to the daemon alone, as systemd sends it (KillMode=mixed); SIGINT to its
        whole process group, Ray's processes included, as Ctrl-C in a terminal does."""
        for n, sig in enumerate(signals):
            if n and between:
                wait_for(lambda: any(e.startswith(between) for e in self.events()), 60, between)
            if sig == signal.SIGINT:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(180)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return code

    def assert_nothing_left(self) -> None:
        """No process the daemon started lives on (Ray ends with its daemon)."""
        with contextlib.suppress(AssertionError):  # they may take a moment to go
            wait_for(lambda: not alive(self.started) and not ray_processes() - self.ray_before, 60)
        left = [" ".join(p.cmdline())[:120] for p in alive(self.started)]
        assert not left, left
        assert not ray_processes() - self.ray_before  # nor any Ray process started after the snapshot


def config_for(tmp_path: Path, seconds: float, steps: int) -> Path:
    return write_config(tmp_path, f"stub:{seconds}", {"num_frames": 4, "steps": steps}, cluster=CPU_WORKERS)


@pytest.fixture
def daemons() -> Any:
    """Every daemon a test starts is killed at the end, whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(30)


def test_idle_daemon_keeps_its_ray_to_itself_and_one_sigterm_stops_it(tmp_path: Path, daemons: list) -> None:
    daemon = Daemon(tmp_path, config_for(tmp_path, 0, 2))
    daemons.append(daemon)
    daemon.wait_until_watching()

    # Every socket the daemon and its Ray listen on is on loopback: nothing reachable from outside.
    listening = []
    for proc in [psutil.Process(daemon.proc.pid), *daemon.started]:
        try:
            listening += [
                (proc.name(), c.laddr) for c in proc.net_connections("inet") if c.status == "LISTEN"
            ]
        except psutil.NoSuchProcess:
            continue  # a worker that came and went
    assert len(listening) >= 4, listening  # GCS, raylet, agents, workers: there is something to check
    assert all(addr.ip in LOOPBACK for _, addr in listening), listening
    # Its token: the daemon's alone, and not the world-readable one Ray makes in ~/.ray.
    token = daemon.settings.state_dir / "ray-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert not (daemon.home / ".ray").exists()

    assert daemon.stop(signal.SIGTERM) == 0, daemon.log()[-3000:]
    assert "stopped" in daemon.events()
    assert RAYS_HANDLER not in daemon.log()
    assert not token.exists()
    assert daemon.proc.stdout is not None and daemon.proc.stdout.read() == b""  # the log is stderr's
    daemon.assert_nothing_left()


def test_one_sigterm_lets_the_jobs_on_every_worker_finish(tmp_path: Path, daemons: list) -> None:
    daemon = Daemon(tmp_path, config_for(tmp_path, 12, 12))
    daemons.append(daemon)
    daemon.wait_until_watching()
    inbox = daemon.settings.paths.inbox
    drop(inbox, "cup")
    drop(inbox, "bowl")
    wait_for(lambda: daemon.in_flight() == 2, 120, "both jobs running, one on each worker")

    assert daemon.stop(signal.SIGTERM) == 0, daemon.log()[-3000:]
    assert any(e.startswith("stop requested: finishing") for e in daemon.events())
    assert "cluster worker lost mid-job" not in daemon.events()
    assert RAYS_HANDLER not in daemon.log()
    assert sorted(records(daemon.settings.paths.outputs)) == ["bowl", "cup"]
    assert not list(inbox.iterdir())
    assert not list((daemon.settings.state_dir / "claimed").iterdir())
    daemon.assert_nothing_left()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT-to-the-group"])
def test_a_second_signal_puts_the_jobs_on_every_worker_back_in_the_inbox(
    tmp_path: Path, daemons: list, sig: signal.Signals
) -> None:
    daemon = Daemon(tmp_path, config_for(tmp_path, 120, 60))
    daemons.append(daemon)
    daemon.wait_until_watching()
    inbox = daemon.settings.paths.inbox
    before = {**drop(inbox, "cup"), **drop(inbox, "bowl")}
    wait_for(lambda: daemon.in_flight() == 2, 120, "both jobs running, one on each worker")

    assert daemon.stop(sig, sig, between="stop requested") == 0, daemon.log()[-3000:]
    assert any(e.startswith("interrupting") for e in daemon.events())
    assert "cluster worker lost mid-job" not in daemon.events()  # Ctrl-C reached Ray too: it held
    assert RAYS_HANDLER not in daemon.log()
    assert inbox_digests(inbox) == before
    assert not records(daemon.settings.paths.outputs)
    assert not list(daemon.settings.paths.done.iterdir()) and not list(daemon.settings.paths.failed.iterdir())
    assert not list((daemon.settings.state_dir / "claimed").iterdir())
    daemon.assert_nothing_left()


def test_a_machine_without_the_gpus_a_worker_needs_is_told_so_at_once(tmp_path: Path) -> None:
    """docs/cluster.md's first example on a machine without GPUs: one line saying what is missing
    and how to run anyway, from ``i2vd check`` and from ``i2vd run``, instead of a long wait."""
    config = write_config(tmp_path, "stub", {"num_frames": 4}, cluster={"backend": "ray", "address": "local"})
    env = {**as_users_run_it(), "CUDA_VISIBLE_DEVICES": ""}  # Ray then counts no GPU, as on a CPU machine
    expected = "the cluster has 0 GPUs; gpus_per_worker = 1 needs them; set 0 to run workers on CPUs"

    check = subprocess.run(
        [*CLI, "check", "--config", str(config)], capture_output=True, text=True, env=env, timeout=300
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"FAIL  cluster: {expected}" in check.stdout.splitlines(), check.stdout
    # stdout holds the check's lines only: Ray's banners and the log go to stderr.
    assert all(line.startswith(("ok  ", "FAIL")) for line in check.stdout.splitlines()), check.stdout

    run = subprocess.run(
        [*CLI, "run", "--config", str(config)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 2, run.stderr[-3000:]  # a start that cannot happen: one line, exit 2
    assert expected in run.stderr


def test_a_sigterm_while_ray_starts_ends_the_start_and_leaves_nothing(tmp_path: Path, daemons: list) -> None:
    """systemd may stop the service while Ray is still starting: the daemon ends with exit 0 (a stop
    is not an error), says so if it did not get to run, claims nothing and leaves no Ray process."""
    daemon = Daemon(tmp_path, config_for(tmp_path, 0, 2))
    daemons.append(daemon)
    drop(daemon.settings.paths.inbox, "cup")
    wait_for(lambda: "jobs run on Ray workers" in daemon.events(), 120, "the daemon to begin starting Ray")

    def ray_started() -> list:
        found = []
        for p in psutil.Process(daemon.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a short-lived child may end meanwhile
                if "gcs_server" in p.name():
                    found.append(p)
        return found

    wait_for(ray_started, 120, "Ray's first process")
    daemon.started = psutil.Process(daemon.proc.pid).children(recursive=True)
    code = daemon.stop(signal.SIGTERM)
    log = daemon.log()
    # Met by Ray's start, the stop ends it, saying so; met after, it is a warm stop. Exit 0 either way.
    assert code == 0, log[-3000:]
    assert "stopped before the cluster was ready" in log or "stop requested" in log, log[-3000:]
    assert not list((daemon.settings.state_dir / "claimed").iterdir())
    assert sorted(p.name for p in daemon.settings.paths.inbox.iterdir()) == ["cup.png", "cup.txt"]
    daemon.assert_nothing_left()
