"""The main loop with the stub generator: overlap, order, bounded memory, stops, recipes at start."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import drop
from structlog.testing import capture_logs

from daemon.config import Settings, load_settings
from daemon.encode.ffmpeg import FFmpeg
from daemon.engine.interface import GenerationRequest
from daemon.engine.stub import StubGenerator
from daemon.listeners.events import JobFinished
from daemon.service.loop import Service, StartupError


def config(tmp_path: Path, extra: str = "") -> Settings:
    # About the loop (overlap, order, stops, recipes), not readiness: files are taken as soon as
    # they are seen. Readiness with the shipped values: test_user_flows, test_hotfolder.
    path = tmp_path / "config.toml"
    path.write_text(
        '[model]\nid = "stub"\n'
        "[watch]\nsettle_seconds = 0\npair_timeout = 0\npoll_interval = 0.05\n"
        "[generation]\nnum_frames = 4\nsteps = 4\nfps = 8\n" + extra
    )
    return load_settings(path)


class RecordingStub(StubGenerator):
    """The package's stub generator, recording which job each call was for."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(seconds)
        self.calls: list[str] = []
        self.called = threading.Condition()

    def generate(self, req: GenerationRequest, on_step: Any = None) -> Any:
        with self.called:
            self.calls.append(req.prompt)
            self.called.notify_all()
        return super().generate(req, on_step)


class BlockFirstFiling:
    """A listener that holds the encoder thread on the first filed job until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished: list[str] = []

    def on_status(self, status: dict[str, Any]) -> None:
        pass

    def on_job_finished(self, event: JobFinished) -> None:
        self.finished.append(event.job)
        if len(self.finished) == 1:
            assert self.release.wait(60), "the loop never generated the next job while this one was filed"

    def close(self) -> None:
        pass


def test_next_job_generates_while_the_last_is_encoded_and_memory_stays_bounded(tmp_path: Path) -> None:
    settings = config(tmp_path, "[output]\nencode_queue = 1\n")
    for i in range(6):
        drop(settings.paths.inbox, f"job{i}", prompt=f"p{i}")
    gen = RecordingStub()
    blocker = BlockFirstFiling()
    service = Service(settings, gen, watch=False, listeners=[blocker])

    def wait_calls(n: int, timeout: float = 60) -> bool:
        with gen.called:
            return gen.called.wait_for(lambda: len(gen.calls) >= n, timeout=timeout)

    runner = threading.Thread(target=service.run_once)
    runner.start()
    # While job0 is held in filing, the loop goes on generating: job1 (queued for the
    # encoder) and job2 (waiting to be queued). A sequential daemon would never get here.
    assert wait_calls(3)
    # ...and no further: frames of at most encode_queue + 2 jobs are in memory.
    assert not wait_calls(4, timeout=1.0)
    assert len(gen.calls) == 3
    blocker.release.set()
    runner.join(120)
    assert not runner.is_alive()
    assert gen.calls == [f"p{i}" for i in range(6)]


def test_results_and_filing_keep_the_order_when_a_job_fails_between(tmp_path: Path) -> None:
    settings = config(tmp_path)
    inbox = settings.paths.inbox
    drop(inbox, "a1")
    drop(inbox, "b2")
    (inbox / "b2.txt").write_text("")  # empty prompt: fails before generation
    drop(inbox, "c3")
    results = Service(settings, StubGenerator(), watch=False).run_once()
    assert [(r.job.stem, r.ok) for r in results] == [("a1", True), ("b2", False), ("c3", True)]


def test_warm_stop_with_no_grace_interrupts_and_returns_the_files_untouched(tmp_path: Path) -> None:
    settings = config(tmp_path)
    settings.watch.stop_grace = 0
    settings.generation.steps = 40
    before = drop(settings.paths.inbox, "slow")
    gen = RecordingStub(seconds=20)
    service = Service(settings, gen, watch=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    with gen.called:
        assert gen.called.wait_for(lambda: gen.calls, timeout=60)
    service.request_stop()
    runner.join(60)
    assert not runner.is_alive()
    back = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in settings.paths.inbox.iterdir()}
    assert back == before
    assert not any(p.is_dir() for p in settings.paths.outputs.iterdir()) and not any(
        settings.paths.done.iterdir()
    )
    assert not any((settings.state_dir / "claimed").iterdir())


def test_second_signal_is_a_cold_stop(tmp_path: Path) -> None:
    settings = config(tmp_path)
    settings.generation.steps = 40
    before = drop(settings.paths.inbox, "slow")
    gen = RecordingStub(seconds=20)
    service = Service(settings, gen, watch=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    with gen.called:
        assert gen.called.wait_for(lambda: gen.calls, timeout=60)
    service.request_stop()  # warm: default grace is 600 s, the job would go on
    service.request_stop()  # cold: interrupted at the next step
    runner.join(60)
    assert not runner.is_alive()
    back = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in settings.paths.inbox.iterdir()}
    assert back == before


def test_an_ffmpeg_that_cannot_work_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    impostor = tmp_path / "ffmpeg"
    impostor.write_text("#!/bin/sh\necho 'not an ffmpeg'\n")
    impostor.chmod(0o755)
    settings = config(tmp_path, f'[output]\nffmpeg = "{impostor}"\n')
    with pytest.raises(StartupError, match=r"is not a working ffmpeg; set output\.ffmpeg"):
        Service(settings, StubGenerator(), watch=False).setup()


def test_broken_recipe_is_refused_at_start_naming_it(tmp_path: Path) -> None:
    settings = config(tmp_path, '[recipes.wobbly]\nfilters = ["nosuchfilter=1"]\n')
    with pytest.raises(StartupError) as e:
        Service(settings, StubGenerator(), watch=False).setup()
    assert "wobbly" in str(e.value) and "nosuchfilter" in str(e.value)


def test_recipe_failing_on_a_job_keeps_the_clip_and_other_outputs(
    tmp_path: Path, ffmpeg_binary: FFmpeg
) -> None:
    # Passes the start-up check (8 synthetic frames) but drops every frame of a 4-frame job.
    # Debian's ffmpeg 5.1 exits 0 here with a 262-byte mp4: only reading it back catches that.
    settings = config(
        tmp_path,
        '[recipes.late]\nfilters = ["select=gte(n\\\\,6)"]\n'
        f'[output]\ndefault_recipes = ["poster", "late"]\nffmpeg = "{ffmpeg_binary.path}"\n',
    )
    before = drop(settings.paths.inbox, "cat")
    with capture_logs() as logged:
        [result] = Service(settings, StubGenerator(), watch=False).run_once()
    assert result.ok and list(result.recipe_errors) == ["late"]
    # The start-up log says which ffmpeg makes the files, and why that one.
    [started] = [e for e in logged if e["event"] == "ffmpeg"]
    assert (started["path"], started["version"]) == (ffmpeg_binary.path, ffmpeg_binary.version)
    assert started["chosen_by"] == "output.ffmpeg"
    [out] = [p for p in settings.paths.outputs.iterdir() if p.is_dir()]
    meta = json.loads((out / f"{out.name}.json").read_text())
    assert meta["status"] == "done_with_recipe_errors"
    assert meta["recipes"]["poster"]["ok"] and not meta["recipes"]["late"]["ok"]
    assert meta["recipes"]["late"]["file"] is None and meta["recipes"]["late"]["error"]
    assert meta["versions"]["ffmpeg"] == ffmpeg_binary.version
    assert sorted(p.name for p in out.iterdir() if "late" in p.name) == []
    assert (out / f"{out.name}.mp4").exists() and (out / f"{out.name}.poster.png").exists()
    assert "late" in (out / f"{out.name}.recipe-errors.txt").read_text()
    done = settings.paths.done / out.name
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in done.iterdir()} == before


def test_start_sweeps_temporary_files_a_kill_left_beside_status_page_and_spool(tmp_path: Path) -> None:
    settings = config(tmp_path)
    state, outputs = settings.state_dir, settings.paths.outputs
    (state / "webhooks").mkdir(parents=True)
    outputs.mkdir(parents=True)
    left = [
        state / ".status.json.0badc0de.tmp",
        outputs / ".index.html.12345678.tmp",
        state / "webhooks" / ".4f2a.json.abcdef01.tmp",
    ]
    for path in left:
        path.write_text("half written")
    kept = outputs / "notes.tmp"  # not one of ours: no dot, no random suffix
    kept.write_text("keep")
    Service(settings, StubGenerator(), watch=False).run_once()
    assert [p for p in left if p.exists()] == []
    assert kept.read_text() == "keep"


def test_a_job_fails_one_way_whatever_raised(tmp_path: Path) -> None:
    """The user's problem is explained in their words; anything else is the daemon's, and says so."""
    from datetime import datetime

    from daemon import logs
    from daemon.errors import SidecarError
    from daemon.folders.jobs import Job
    from daemon.messages import INTERNAL_ERROR
    from daemon.service.filing import fail_job

    job = Job("cat_20260101_120000", "cat", Path("."), tmp_path, ["cat.png"], datetime.now())
    with capture_logs() as logged:
        theirs = fail_job(job, SidecarError("'prompt' is missing"), logs.get(), "failed/cat_20260101_120000")
        ours = fail_job(job, KeyError("width"), logs.get(), "failed/cat_20260101_120000")
    assert (theirs.job, theirs.error, ours.error) == (job, "'prompt' is missing", INTERNAL_ERROR)
    assert [(e["event"], e["log_level"]) for e in logged] == [
        ("job failed", "warning"),
        ("internal error", "error"),
    ]
