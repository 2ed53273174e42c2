"""The queue with Ray workers: one chooser hands out jobs one at a time, so turns hold across
every worker, and a cancel reaches a job running on a worker (see ``test_cluster`` for the Ray set-up)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from tests.rayhelper import drop, wait_for

ray = pytest.importorskip("ray")

from daemon.cluster.ray_executor import RayExecutor  # noqa: E402
from daemon.service import controls  # noqa: E402
from daemon.service.loop import Service  # noqa: E402
from tests.cluster.test_cluster import FAKE_GPUS, no_ray_left, no_ray_token_in_this_process, settings_for  # noqa: E402

pytestmark = pytest.mark.slow
__all__ = ["no_ray_left", "no_ray_token_in_this_process"]  # autouse fixtures, shared


def test_turns_hold_across_workers_and_a_cancel_stops_a_job_on_its_worker(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, "stub:60", {"gpus_per_worker": 1, "workers": 2}, generation={"steps": 60}
    )
    inbox = settings.paths.inbox
    for i in range(4):
        drop(inbox / "a", f"a{i}")
    executor = RayExecutor(settings, ray_options=FAKE_GPUS)
    service = Service(settings, executor, watch=False)
    started: list[str] = []
    real_start = service._start

    def recording_start(job, queued_at):  # type: ignore[no-untyped-def]
        started.append((job.rel_dir / job.stem).as_posix())
        real_start(job, queued_at)

    service._start = recording_start  # type: ignore[method-assign]
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        wait_for(lambda: len([w for w in executor.board.snapshot() if w.job]) == 2, message="both busy")
        before = drop(inbox / "b", "b0")
        wait_for(lambda: service.monitor.queued()[0][:1] == ["b/b0"], message="b0 next in line")
        [victim] = [w.job for w in executor.board.snapshot() if w.name == "ray-0"]
        controls.request_cancel(settings.state_dir, str(victim), "tester")
        folder = wait_for(lambda: next(settings.paths.failed.glob(f"a/{victim}"), None), message="cancelled")
        assert "cancelled by tester (i2vd cancel)" in (folder / "error.txt").read_text()
        # The worker freed by the cancel takes b's one job, not a third of a's.
        wait_for(lambda: len(started) == 3, message="a third job started")
        assert started == ["a/a0", "a/a1", "b/b0"]
        assert [w.state for w in executor.board.snapshot()] == ["busy", "busy"], "no worker was lost"
    finally:
        service.request_stop()
        service.request_stop()
        runner.join(120)
    assert not runner.is_alive()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (inbox / "b").iterdir()} == before
