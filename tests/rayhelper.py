"""Helpers for the tests that start a real Ray: its processes, jobs dropped, what came out.

Shared by tests/test_cluster*.py. Nothing here fakes Ray: the tests start private Rays (or Ray
nodes with ``ray start``) on this machine, with GPUs faked through Ray's resource counts or
workers on CPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

# What Ray's own processes have in their command lines.
RAY_PROCESS_MARKS = ("raylet", "gcs_server", "ray::", "default_worker.py", "ray/dashboard", "ray/_private")
# In the environment of this test run and of every process it starts (Ray's included, and the
# ``i2vd`` processes, which inherit it): other runs' Rays on this machine are not this run's.
RUN_MARK = ("I2V_TEST_RAY_RUN", os.environ.setdefault("I2V_TEST_RAY_RUN", uuid.uuid4().hex))


def ray_processes() -> set[int]:
    """Every Ray process this test run started and that still runs (tests compare before and after)."""
    found = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        text = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
        if any(mark in text for mark in RAY_PROCESS_MARKS):
            try:
                if proc.environ().get(RUN_MARK[0]) == RUN_MARK[1] and proc.status() != psutil.STATUS_ZOMBIE:
                    found.add(proc.info["pid"])
            except psutil.Error:
                continue  # gone, or another user's
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie has ended)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def as_users_run_it() -> dict[str, str]:
    """The environment for an ``i2vd`` process: Ray's settings as a user's shell has them."""
    return {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}


def wait_for(what: Callable[[], Any], timeout: float = 90, message: str = "") -> Any:
    """Poll ``what`` until it returns something true; fail saying ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting: {message or what}")


def drop(inbox: Path, name: str, prompt: str = "waves") -> dict[str, str]:
    """An image and its prompt file in ``inbox``; their SHA-256 by file name."""
    inbox.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (30, 90, 150)).save(inbox / f"{name}.png")
    (inbox / f"{name}.txt").write_text(prompt)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox.glob(f"{name}.*")}


def inbox_digests(inbox: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox.iterdir() if p.is_file()}


def records(outputs: Path) -> dict[str, dict[str, Any]]:
    """Each made clip's JOB.json, by the name of the image it came from."""
    return {p.parent.name.rsplit("_", 2)[0]: json.loads(p.read_text()) for p in outputs.glob("*/*.json")}
