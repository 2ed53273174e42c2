"""The queue end to end: the real ``i2vd`` on the shipped config, jobs dropped, the command
run, the result checked on disk (see ``test_user_flows`` for the set-up)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_user_flows import CLI, Lines, drop, env, jobs_in, share, status, wait_for

pytestmark = pytest.mark.slow
__all__ = ["share"]  # the fixture, shared


def start(share: Path, seconds: float, **overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", "--config", str(share / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(I2VD_MODEL__ID=f"stub:{seconds:g}", **overrides),
        cwd=share,
    )


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def started_jobs(lines: Lines) -> list[str]:
    return [str(e.get("job")) for e in list(lines.lines) if e.get("event") == "job started"]


def test_a_folder_with_one_photo_waits_at_most_one_job_behind_a_folder_with_many(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    daemon = start(share, 4)
    stop.append(daemon)
    lines = Lines(daemon)
    inbox = share / "inbox"
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    for i in range(6):
        drop(inbox / "marketing", f"m{i}", seed=i)
    wait_for(lambda: started_jobs(lines), 30, "marketing's first job to start")
    drop(inbox / "sales", "one", seed=9)
    wait_for(lambda: jobs_in(share / "outputs" / "sales"), 60, "sales' job to be filed")
    order = [job.rsplit("_", 2)[0] for job in started_jobs(lines)]
    # Arrival order would put it after all six of marketing's.
    assert "one" in order[:3], order
    assert order[0] == "m0"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    # What was not started is still waiting, untouched, in marketing's folder.
    left = {p.stem for p in (inbox / "marketing").glob("*.png")}
    assert left and left | set(order) >= {f"m{i}" for i in range(6)}
    assert status(share)["state"] == "stopped"
