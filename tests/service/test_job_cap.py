"""``[limits] max_job_seconds``: what one job may cost in GPU time, a bound share users cannot raise.

A job still generating past it is stopped between two denoising steps and fails with a plain
error.txt; its inputs go to failed/ byte-identical and the GPU takes the next job. Shown with the
real ``i2vd run`` and the package's ``stub`` generator (which spreads its time over the steps like
a slow GPU), and with the tiny diffusers model, whose step callback is the real engine's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import digest, drop, request, wait_for, write_config

from daemon.service.executor import JobStopped, ThreadExecutor

CLI = [sys.executable, "-m", "daemon.cli"]


def failed_jobs(tmp_path: Path) -> dict[str, Path]:
    failed = tmp_path / "failed"
    return {p.name.rsplit("_", 2)[0]: p for p in failed.iterdir()} if failed.is_dir() else {}


@pytest.mark.slow
def test_a_job_over_the_time_cap_fails_plainly_and_the_gpu_takes_the_next(tmp_path: Path) -> None:
    # The one value changed: a cap of 3 s instead of the shipped 30 min. The stand-in GPU would
    # take 300 s a job, 2 s a step over 150 steps.
    config = write_config(
        tmp_path,
        "stub:300",
        {"num_frames": 2, "steps": 150, "fps": 8},
        limits={"max_job_seconds": 3},
        output={"default_recipes": []},
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    before = {"cat": drop(inbox, "cat", seed=1), "dog": drop(inbox, "dog", seed=2)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(lambda: len(failed_jobs(tmp_path)) == 2, 120, "both jobs stopped and failed")
        assert proc.poll() is None, "the daemon keeps running"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, stderr[-3000:]
    for name, folder in failed_jobs(tmp_path).items():
        error = (folder / "error.txt").read_text()
        assert "This clip took longer than the 3 s allowed for one clip, so it was stopped." in error
        assert "fewer frames or fewer steps, or a smaller resolution" in error
        assert {p.name: digest(p) for p in folder.glob(f"{name}.*")} == before[name]
    assert [p for p in (tmp_path / "outputs").iterdir() if p.is_dir()] == []
    assert os.listdir(inbox) == []
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    stopped = [e for e in lines if str(e.get("event")).startswith("job over limits.max_job_seconds")]
    # Each told once, and both failed within the wait above: long before the 300 s the stand-in
    # GPU takes for a job it is left to finish.
    assert sorted(e["job"].split("_")[0] for e in stopped) == ["cat", "dog"]


def test_the_real_engine_stops_between_two_steps_and_makes_the_next_job(tiny_generator: object) -> None:
    executor = ThreadExecutor([tiny_generator], owned=False)  # type: ignore[list-item]
    executor.start(warm_up=None)
    steps: list[tuple[str | None, int | None]] = []

    def on_change() -> None:
        # On the worker's thread, as each step is reported: the first one of "long" asks it to stop.
        [w] = executor.board.snapshot()
        steps.append((w.job, w.step))
        if w.job == "long" and w.step == 1:
            executor.stop_job("long", "took too long")

    executor.board.on_change = on_change
    try:
        long = executor.submit("long", request(steps=4))
        with pytest.raises(JobStopped, match="took too long"):
            long.result(timeout=300)
        assert max(s for j, s in steps if j == "long" and s is not None) == 1
        after = executor.submit("after", request(steps=2)).result(timeout=300)
        assert after.frames.shape[0] == 4
        assert ("after", 2) in steps
    finally:
        executor.close()


def test_stopping_a_job_that_already_ended_changes_nothing(tiny_generator: object) -> None:
    executor = ThreadExecutor([tiny_generator], owned=False)  # type: ignore[list-item]
    executor.start(warm_up=None)
    try:
        first = executor.submit("first", request(steps=1)).result(timeout=300)
        executor.stop_job("first", "too late")  # ended: nothing to stop, nothing kept
        again = executor.submit("first", request(steps=1)).result(timeout=300)
        assert first.frames.shape == again.frames.shape
    finally:
        executor.close()
