"""The executor seam at capacity 1 and 3: the package's ThreadExecutor over stub generators.

What it proves: the loop keeps ``capacity`` jobs in flight and no more; jobs are filed in the
order they finished; a warm stop lets every job in flight finish and claims no more; a cold
stop puts every one of them back untouched; jobs a crash left claimed are all resumed.
No timing: the generators below block until the test lets them go.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import INSTANT_WATCH, digest, png_bytes, write_config

from daemon.config import Settings, load_settings
from daemon.engine.interface import GenerationRequest, GenerationResult
from daemon.engine.stub import StubGenerator
from daemon.folders.claim import claim
from daemon.folders.scan import InboxScanner
from daemon.service.executor import ThreadExecutor
from daemon.service.loop import Service, folders_of


class Gate:
    """Shared by the gated generators: who is generating now, and which job may finish."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running: list[str] = []
        self.most = 0
        self.allowed: set[str] = set()
        self.finished: list[str] = []

    def allow(self, *prompts: str) -> None:
        with self.cond:
            self.allowed.update(prompts)
            self.cond.notify_all()

    def wait_running(self, n: int) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.running) >= n, 30), self.running
            return list(self.running)


class GatedStub(StubGenerator):
    """The package's stub generator, held at its first step until the test allows its prompt."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def generate(self, req: GenerationRequest, on_step: Any = None) -> GenerationResult:
        gate = self.gate

        def held(step: int, total: int) -> None:
            if step == 1:
                with gate.cond:
                    gate.running.append(req.prompt)
                    gate.most = max(gate.most, len(gate.running))
                    gate.cond.notify_all()
                    while req.prompt not in gate.allowed:
                        gate.cond.wait(0.05)
                        if on_step is not None:
                            on_step(step, total)  # where a cold stop interrupts
                    gate.running.remove(req.prompt)
                    gate.finished.append(req.prompt)
                    gate.cond.notify_all()
            if on_step is not None:
                on_step(step, total)

        return super().generate(req, held)


def settings_for(tmp_path: Path) -> Settings:
    # About the executor seam, not readiness: files are taken as soon as they are seen.
    path = write_config(
        tmp_path, "stub", {"num_frames": 2, "steps": 2}, watch=INSTANT_WATCH, output={"default_recipes": []}
    )
    return load_settings(path)


def drop(inbox: Path, names: list[str]) -> dict[str, str]:
    inbox.mkdir(parents=True, exist_ok=True)
    originals = {}
    for i, name in enumerate(names):
        (inbox / f"{name}.png").write_bytes(png_bytes(seed=i))
        (inbox / f"{name}.txt").write_text(name)
        originals |= {
            f"{name}.png": digest(inbox / f"{name}.png"),
            f"{name}.txt": digest(inbox / f"{name}.txt"),
        }
    return originals


def start(service: Service) -> threading.Thread:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("capacity", [1, 3])
def test_capacity_jobs_in_flight_filed_in_the_order_they_finish(tmp_path: Path, capacity: int) -> None:
    settings = settings_for(tmp_path)
    gate = Gate()
    names = ["a", "b", "c", "d", "e", "f"]
    drop(settings.paths.inbox, names)
    service = Service(settings, ThreadExecutor([GatedStub(gate) for _ in range(capacity)]), watch=False)
    filed: list[str] = []
    service.listeners.append(_Recorder(filed))
    thread = start(service)
    try:
        order: list[str] = []
        while len(order) < len(names):
            running = gate.wait_running(min(capacity, len(names) - len(order)))
            # Let the one that started last finish first: filing follows finishing, not claiming.
            last = running[-1]
            gate.allow(last)
            order.append(last)
            with gate.cond:
                assert gate.cond.wait_for(lambda last=last: last in gate.finished, 30)
        assert gate.most == capacity, "exactly capacity jobs in flight, never more"
    finally:
        service.request_stop()
        thread.join(60)
    assert [name.split("_")[0] for name in filed] == order
    assert sorted(p.name.split("_")[0] for p in settings.paths.outputs.iterdir() if p.is_dir()) == names


class _Recorder:
    def __init__(self, filed: list[str]) -> None:
        self.filed = filed

    def on_status(self, status: dict[str, Any]) -> None:
        pass

    def on_job_finished(self, event: Any) -> None:
        self.filed.append(event.job)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("capacity", [1, 3])
def test_warm_stop_finishes_every_job_in_flight_and_claims_no_more(tmp_path: Path, capacity: int) -> None:
    settings = settings_for(tmp_path)
    gate = Gate()
    names = ["a", "b", "c", "d", "e"]
    originals = drop(settings.paths.inbox, names)
    service = Service(settings, ThreadExecutor([GatedStub(gate) for _ in range(capacity)]), watch=False)
    thread = start(service)
    running = gate.wait_running(capacity)
    service.request_stop()
    gate.allow(*names)
    thread.join(60)
    assert not thread.is_alive()
    made = sorted(p.name.split("_")[0] for p in settings.paths.outputs.iterdir() if p.is_dir())
    assert made == sorted(running)
    waiting = {p.name: digest(p) for p in settings.paths.inbox.iterdir()}
    assert waiting == {k: v for k, v in originals.items() if k.split(".")[0] not in running}


@pytest.mark.parametrize("capacity", [1, 3])
def test_cold_stop_puts_every_job_in_flight_back_untouched(tmp_path: Path, capacity: int) -> None:
    settings = settings_for(tmp_path)
    gate = Gate()
    originals = drop(settings.paths.inbox, ["a", "b", "c", "d"])
    service = Service(settings, ThreadExecutor([GatedStub(gate) for _ in range(capacity)]), watch=False)
    thread = start(service)
    gate.wait_running(capacity)
    service.request_stop()
    service.request_stop()  # the second signal: interrupt
    thread.join(60)
    assert not thread.is_alive()
    assert {p.name: digest(p) for p in settings.paths.inbox.iterdir()} == originals
    assert not any(p.is_dir() for p in settings.paths.outputs.iterdir())
    assert not settings.paths.failed.exists() or not any(settings.paths.failed.iterdir())
    assert not any((settings.state_dir / "claimed").iterdir())


def test_jobs_a_crash_left_claimed_all_resume_at_capacity_3(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    originals = drop(settings.paths.inbox, ["a", "b", "c", "d"])
    folders = folders_of(settings)
    folders.ensure()
    # Judged at once: these claims stand for what a crash left, not for readiness.
    scanner = InboxScanner(folders.inbox, ignore=[".*"], settle_seconds=0, pair_timeout=0, clock=lambda: 0.0)
    from datetime import datetime

    claimed = [claim(folders, g, datetime.now().astimezone()) for g in scanner.scan()]
    assert all(claimed) and len(claimed) == 4
    for job in claimed:
        assert job is not None
        (job.out / "partial.mp4").write_bytes(b"half")  # what the crash left mid-encode
    service = Service(settings, ThreadExecutor([StubGenerator() for _ in range(3)]), watch=False)
    results = service.run_once()
    assert sorted(r.job.stem for r in results) == ["a", "b", "c", "d"] and all(r.ok for r in results)
    assert all(r.record is not None and r.record.attempts == 2 for r in results)
    done = {f.name: digest(f) for f in settings.paths.done.rglob("*") if f.is_file()}
    assert done == originals
    assert not list(settings.paths.outputs.rglob("partial.mp4"))


class _Overlap:
    """A listener that notices being called from two threads at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.threads: set[str] = set()
        self.calls = 0

    def _enter(self) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.threads.add(threading.current_thread().name)
        self.calls += 1
        threading.Event().wait(0.002)  # widen the window an unlocked caller would show
        self.inside -= 1

    def on_status(self, status: dict[str, Any]) -> None:
        self._enter()

    def on_job_finished(self, event: Any) -> None:
        self._enter()

    def close(self) -> None:
        pass


def test_listeners_are_never_called_from_two_threads_at_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    drop(settings.paths.inbox, [f"j{i}" for i in range(6)])
    overlap = _Overlap()
    service = Service(settings, ThreadExecutor([StubGenerator(0.3) for _ in range(3)]), watch=False)
    service.listeners.append(overlap)
    results = service.run_once()
    assert len(results) == 6 and all(r.ok for r in results)
    # Called from the loop and the filing thread, but one at a time.
    assert "i2vd-filing" in overlap.threads and len(overlap.threads) >= 2 and overlap.calls > 6
    assert overlap.most == 1
