"""The systemd notify protocol, against a real AF_UNIX datagram socket standing in for PID 1."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.listeners import systemd as notify


def _receive_all(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """An abstract-namespace socket named in NOTIFY_SOCKET, as systemd sets it."""
    name = f"i2vd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.status("idle") is False
    assert notify.SystemdListener().enabled is False


def test_abstract_socket_messages(manager: socket.socket) -> None:
    assert notify.ready()
    assert notify.status("working on a\nREADY=1")  # a newline must not smuggle a second field
    assert notify.stopping("finishing cat")
    assert notify.reloading()
    msgs = _receive_all(manager)
    assert msgs[0] == "READY=1"
    assert msgs[1] == "STATUS=working on a READY=1"
    assert msgs[2].split("\n") == ["STOPPING=1", "STATUS=finishing cat"]
    fields = dict(line.split("=", 1) for line in msgs[3].split("\n"))
    assert fields["RELOADING"] == "1"
    # CLOCK_MONOTONIC in microseconds: what systemd compares against its own reload request.
    assert 0 < int(fields["MONOTONIC_USEC"]) <= notify.time.clock_gettime_ns(notify.time.CLOCK_MONOTONIC)


def test_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.ready()
        assert _receive_all(sock) == ["READY=1"]


def test_watchdog_only_when_meant_for_us(manager: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    assert notify.watchdog_interval() is None
    assert notify.watchdog() is False
    monkeypatch.setenv("WATCHDOG_USEC", "300000000")
    assert notify.watchdog_interval() == 150.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent: not ours
    assert notify.watchdog_interval() is None
    assert notify.watchdog() is False
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog()
    assert _receive_all(manager) == ["WATCHDOG=1"]


def _busy(step: int, queued: int = 3) -> dict[str, object]:
    return {
        "state": "busy",
        "current": {"job": "cat_20260101_120000", "step": step, "total": 50, "eta_seconds": None},
        "queue_length": queued,
    }


def test_status_lines() -> None:
    assert notify.status_line(_busy(12)) == "working on cat_20260101_120000, step 12/50, 3 queued"
    assert notify.status_line({"state": "idle", "current": None, "queue_length": 0}) == "idle, 0 queued"
    starting = {"state": "busy", "current": {"job": "j", "step": 0, "total": None}, "queue_length": 1}
    assert notify.status_line(starting) == "working on j, starting, 1 queued"
    assert notify.status_line({"state": "stopped"}) == "stopped"
    encoding = {"state": "busy", "current": None, "encoding": ["a_1", "b_1"], "queue_length": 0}
    assert notify.status_line(encoding) == "encoding a_1 (+1 more), 0 queued"


def test_progress_reads_the_same_in_the_journal_and_in_i2vd_status() -> None:
    """One formatter: a step before the total is known is not hidden behind "starting"."""
    from daemon.service.status_file import render

    status = {
        "running": True,
        "state": "busy",
        "queue_length": 0,
        "current": {"job": "j", "step": 3, "total": None},
    }
    assert "step 3/?" in notify.status_line(status)
    assert "step 3/?" in render(status)


def test_listener_throttles_steps_but_not_state_changes(manager: socket.socket) -> None:
    now = [100.0]
    listener = notify.SystemdListener(clock=lambda: now[0])
    listener.on_status({"state": "idle", "current": None, "queue_length": 3})
    listener.on_status(_busy(1))  # new job: shown at once
    listener.on_status(_busy(2))  # same job, same second: held back
    now[0] += 1.0
    listener.on_status(_busy(3))  # a second later: shown
    listener.on_status({"state": "idle", "current": None, "queue_length": 2})  # state changed: at once
    listener.on_status({"state": "idle", "current": None, "queue_length": 2})  # nothing new: not resent
    assert _receive_all(manager) == [
        "STATUS=idle, 3 queued",
        "STATUS=working on cat_20260101_120000, step 1/50, 3 queued",
        "STATUS=working on cat_20260101_120000, step 3/50, 3 queued",
        "STATUS=idle, 2 queued",
    ]


def test_listener_pings_watchdog_from_the_loop(
    manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")  # 20 s: ping at most every 5 s
    now = [0.0]
    listener = notify.SystemdListener(clock=lambda: now[0])
    listener.on_status(_busy(1))
    now[0] += 1
    listener.on_status(_busy(2))
    now[0] += 5
    listener.on_status(_busy(3))
    pings = [m for m in _receive_all(manager) if m == "WATCHDOG=1"]
    assert len(pings) == 2
