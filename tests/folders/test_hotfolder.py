"""The hot folder against real writers: real inotify watchers, real folders, the real Service
with the ``stub`` generator (no model work) and a real clock, real subprocesses for the CLI.

What it proves: a file is never taken before it is whole, whatever way it arrives; a burst
ends with every input in exactly one place; odd names, links, FIFOs and a vanishing inbox
neither crash the daemon nor lose or double a job; a second daemon is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import helpers
import pytest
import structlog
from helpers import digest, png_bytes, wait_for

from daemon.config import Settings, load_settings
from daemon.config_sections import DEFAULT_IGNORE
from daemon.engine.stub import StubGenerator
from daemon.folders.claim import claim
from daemon.folders.jobs import JOB_NAME_MAX
from daemon.folders.scan import InboxScanner
from daemon.folders.watch import Watcher
from daemon.service.loop import Service, folders_of

# Real observers, writers and CLI subprocesses: seconds each (`pytest -m 'not slow'` leaves it out).
pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "daemon.cli"]
# Small clips and no recipes: each job costs one tiny ffmpeg run.
FAST_GENERATION = {"num_frames": 2, "steps": 1, "fps": 8}


# -- helpers ------------------------------------------------------------------------------


def write_config(tmp_path: Path, model: str = "stub", **sections: dict[str, object]) -> Path:
    sections.setdefault("output", {"default_recipes": []})
    path = helpers.write_config(tmp_path, model, FAST_GENERATION, **sections)
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return path


def settings_for(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    return load_settings(write_config(tmp_path, **sections))


def drop_pair(inbox: Path, name: str, seed: int = 0, prompt: str = "a calm sea") -> dict[str, str]:
    image, sidecar = inbox / f"{name}.png", inbox / f"{name}.txt"
    image.write_bytes(png_bytes(seed=seed))
    sidecar.write_text(prompt)
    return {image.name: digest(image), sidecar.name: digest(sidecar)}


def filed(base: Path) -> dict[str, list[Path]]:
    """Input file name -> every job folder under ``base`` (done/ or failed/) holding it."""
    found: dict[str, list[Path]] = {}
    for job in base.iterdir() if base.exists() else []:
        for f in job.iterdir():
            if f.name != "error.txt" and not f.name.endswith(".log"):
                found.setdefault(f.name, []).append(job)
    return found


def entries(base: Path) -> list[Path]:
    """What is in ``base``; nothing while the daemon has not made it yet."""
    return list(base.iterdir()) if base.exists() else []


class Running:
    """The real Service in a thread, as ``i2vd run`` runs it (without the signal handlers)."""

    def __init__(self, settings: Settings, *, watch: bool = True) -> None:
        self.service = Service(settings, StubGenerator(), watch=watch)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def __enter__(self) -> Service:
        self.thread.start()
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.service.stop.set()
            self.service.wake.set()
            self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the daemon did not stop"
        if self.error is not None:
            raise AssertionError(f"the daemon crashed: {self.error!r}") from self.error


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


# -- the watcher --------------------------------------------------------------------------


def test_inotify_watcher_wakes_on_a_real_write_and_not_on_files_leaving(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.png").write_bytes(b"x")
    wake = threading.Event()
    watcher = Watcher(inbox, wake, "inotify")
    assert watcher.mode == "inotify"
    watcher.start()
    try:
        assert watcher.armed
        # The write of old.png just before the start may still be reported late: let it pass.
        wake.wait(0.5)
        wake.clear()
        # A file leaving the inbox (what every claim does) brings no work: no wake-up, so a
        # backlog is not rescanned once per job. watchdog holds a move-out back for half a second
        # (waiting for its other half) before it reports it, with the folder's "modified".
        os.rename(inbox / "old.png", tmp_path / "old.png")
        assert not wake.wait(2.0)
        (inbox / "cat.png").write_bytes(b"data")
        assert wake.wait(5), "a write into the inbox must wake the loop"
    finally:
        watcher.stop()
    assert not watcher.armed


def test_inotify_watcher_rearms_when_the_inbox_is_made_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    wake = threading.Event()
    watcher = Watcher(inbox, wake, "inotify")
    watcher.start()
    try:
        inbox.rmdir()  # e.g. a share unmounted; the old watch is dead from here on
        wait_for(lambda: not watcher.armed, 10, "the watcher to notice the inbox is gone")
        inbox.mkdir()
        wait_for(lambda: watcher.armed, 10, "the watcher to watch the new inbox")
        wake.clear()
        (inbox / "cat.png").write_bytes(b"data")
        assert wake.wait(5), "writes into the re-made inbox must wake the loop"
    finally:
        watcher.stop()


@pytest.mark.parametrize("made", ["before the start", "while watching"])
def test_inotify_watcher_survives_a_thousand_nested_folders(tmp_path: Path, made: str) -> None:
    # A recursive watcher walks such a tree by recursion: it could not start, or went deaf.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    wake = threading.Event()
    watcher = Watcher(inbox, wake, "inotify", max_depth=8)
    with contextlib.ExitStack() as stack:
        if made == "before the start":
            deepest = stack.enter_context(helpers.nested(inbox, 1100))
            watcher.start()
        else:
            watcher.start()
            deepest = stack.enter_context(helpers.nested(inbox, 1100))
            wake.wait(1)
        try:
            assert watcher.armed
            assert len(watcher._ino.watches) == 1 + 9, "down to max_depth, and a returned job folder below"
            (deepest / "lost.png").write_bytes(b"data")  # too deep: no watch there
            wake.clear()
            (inbox / "d" / "cat.png").write_bytes(b"data")
            assert wake.wait(5), "a write into the inbox must still wake the loop"
        finally:
            watcher.stop()
    assert not watcher.armed


def test_poll_mode_starts_no_observer_and_the_scan_finds_jobs(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, watch={"mode": "poll"})
    wake = threading.Event()
    watcher = Watcher(settings.paths.inbox, wake, "poll")
    watcher.start()
    assert watcher.mode == "poll" and not watcher.armed
    watcher.stop()
    with Running(settings) as service:
        before = drop_pair(settings.paths.inbox, "polled")
        wait_for(lambda: "polled.png" in filed(settings.paths.done), 30, "the polled job to be done")
        assert service._watcher is not None and not service._watcher.armed
    [job] = filed(settings.paths.done)["polled.png"]
    assert {n: digest(job / n) for n in before} == before


# -- readiness against real writers --------------------------------------------------------


def slow_write(path: Path, data: bytes, pieces: int, pause: float, *, hold_open: bool) -> None:
    """Write ``data`` in ``pieces``, pausing between them, like a copy over a slow share.

    ``hold_open``: one open file for the whole copy (smbd, cp); otherwise open-append-close
    per piece (a client that reconnects, or a tool that writes in sessions).
    """
    chunks = [data[i * len(data) // pieces : (i + 1) * len(data) // pieces] for i in range(pieces)]
    if hold_open:
        with open(path, "wb") as f:
            for i, chunk in enumerate(chunks):
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                if i < pieces - 1:
                    time.sleep(pause)
    else:
        path.write_bytes(b"")
        for i, chunk in enumerate(chunks):
            with open(path, "ab") as f:
                f.write(chunk)
            if i < pieces - 1:
                time.sleep(pause)


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_a_slow_writer_that_pauses_is_not_taken_half_written(tmp_path: Path, mode: str) -> None:
    # Pauses longer than the poll interval (the daemon looks several times during each) but
    # shorter than the settle time: only the settle rule stands between the half file and a claim.
    settings = settings_for(
        tmp_path, watch={"mode": mode, "settle_seconds": 1.0, "poll_interval": 0.1, "pair_timeout": 60}
    )
    inbox = settings.paths.inbox
    data = png_bytes(1, (400, 300))
    with Running(settings):
        (inbox / "slow.txt").write_text("waves roll in")  # the pair is complete all along
        slow_write(inbox / "slow.png", data, pieces=4, pause=0.6, hold_open=False)
        wait_for(
            lambda: "slow.png" in filed(settings.paths.done) or entries(settings.paths.failed),
            30,
            "the slow job to finish",
        )
    assert not entries(settings.paths.failed), "taken before it was whole: the image was truncated"
    [job] = filed(settings.paths.done)["slow.png"]
    assert digest(job / "slow.png") == digest(data)
    assert (settings.paths.outputs / job.name / f"{job.name}.mp4").is_file()


def test_a_writer_holding_the_file_open_is_waited_for_beyond_the_settle_time(tmp_path: Path) -> None:
    # The writer stalls for longer than settle_seconds with the file still open (an SMB
    # upload on flaky Wi-Fi): settling alone would take it; the open-for-writing check must not.
    settings = settings_for(
        tmp_path, watch={"mode": "inotify", "settle_seconds": 0.5, "poll_interval": 0.1, "pair_timeout": 60}
    )
    inbox = settings.paths.inbox
    data = png_bytes(2, (400, 300))
    with Running(settings):
        (inbox / "stall.txt").write_text("a slow pan")
        slow_write(inbox / "stall.png", data, pieces=3, pause=1.5, hold_open=True)
        wait_for(
            lambda: "stall.png" in filed(settings.paths.done) or entries(settings.paths.failed),
            30,
            "the stalled job to finish",
        )
    assert not entries(settings.paths.failed), "taken while its writer still had it open"
    [job] = filed(settings.paths.done)["stall.png"]
    assert digest(job / "stall.png") == digest(data)


def test_a_file_renamed_into_the_inbox_is_picked_up(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, watch={"mode": "inotify", "settle_seconds": 0.3})
    staging = tmp_path / "staging"  # same filesystem: the rename is atomic, the file whole at once
    staging.mkdir()
    before = drop_pair(staging, "moved", seed=3)
    with Running(settings):
        for name in before:
            os.rename(staging / name, settings.paths.inbox / name)
        wait_for(lambda: "moved.txt" in filed(settings.paths.done), 30, "the renamed-in job to be done")
    [job] = filed(settings.paths.done)["moved.png"]
    assert {n: digest(job / n) for n in before} == before


def test_a_file_written_to_between_scan_and_claim_is_left_to_settle_again(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    inbox = settings.paths.inbox
    drop_pair(inbox, "late")
    # A scanner that judges at once: the test is about the claim re-checking, not settling.
    scanner = InboxScanner(
        inbox, ignore=DEFAULT_IGNORE, settle_seconds=0, pair_timeout=0, clock=time.monotonic
    )
    [group] = scanner.scan()
    with open(inbox / "late.png", "ab") as f:  # the user copies it again, or a writer resumes
        f.write(b"more")
    folders = folders_of(settings)
    folders.ensure()
    assert claim(folders, group, datetime.now()) is None
    assert sorted(os.listdir(inbox)) == ["late.png", "late.txt"]
    assert not any(folders.claimed.iterdir())
    [again] = scanner.scan()  # judged afresh (settle 0 here), it is taken whole
    job = claim(folders, again, datetime.now())
    assert job is not None and (job.inputs / "late.png").read_bytes().endswith(b"more")


def test_the_scanner_says_when_the_next_waiting_group_is_due(tmp_path: Path) -> None:
    now = [1000.0]
    scanner = InboxScanner(
        tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=5, pair_timeout=60, clock=lambda: now[0]
    )
    assert scanner.scan() == [] and scanner.next_ready_in is None
    (tmp_path / "lone.png").write_bytes(b"x")  # due at the pair timeout
    scanner.scan()
    assert scanner.next_ready_in == 60
    now[0] += 2
    (tmp_path / "cat.png").write_bytes(b"x")
    (tmp_path / "cat.txt").write_text("p")  # a pair: due when settled
    scanner.scan()
    assert scanner.next_ready_in == 5
    now[0] += 5
    assert [g.name for g in scanner.scan()] == ["cat"] and scanner.next_ready_in == 60 - 7


BURST = 300  # the benchmark drops 1,000; this keeps the test within a minute or two


def test_a_burst_of_pairs_ends_with_every_input_in_exactly_one_place(tmp_path: Path) -> None:
    # A short settle keeps 300 pairs within CI's time; the shipped 3 s is in test_user_flows.
    settings = settings_for(tmp_path, watch={"mode": "inotify", "settle_seconds": 0.2, "pair_timeout": 60})
    inbox = settings.paths.inbox
    image = png_bytes(4, (16, 16))
    expected: dict[str, str] = {}
    with Running(settings):
        # Dropped while the daemon runs, as fast as Python can write them.
        for i in range(BURST):
            name = f"burst-{i:04d}"
            (inbox / f"{name}.png").write_bytes(image)
            (inbox / f"{name}.txt").write_text(f"prompt {i}")
            expected[f"{name}.png"] = digest(image)
            expected[f"{name}.txt"] = digest(f"prompt {i}".encode())

        def all_filed() -> bool:
            return len(entries(settings.paths.done)) + len(entries(settings.paths.failed)) >= BURST

        wait_for(all_filed, 240, f"all {BURST} jobs to be filed")
    done, failed = filed(settings.paths.done), filed(settings.paths.failed)
    assert not failed, f"stub jobs cannot fail, yet: {sorted(failed)[:5]}"
    assert sorted(done) == sorted(expected), "an input is missing from done/ (lost) or unexpected"
    doubled = {n: jobs for n, jobs in done.items() if len(jobs) != 1}
    assert not doubled, f"taken more than once: {list(doubled.items())[:3]}"
    for name, [job] in done.items():
        assert digest(job / name) == expected[name], name
        assert sorted(p.name for p in job.iterdir()) == sorted(
            [f"{job.name.rsplit('_', 2)[0]}.png", f"{job.name.rsplit('_', 2)[0]}.txt"]
        )
    assert len([p for p in settings.paths.outputs.iterdir() if p.is_dir()]) == BURST
    assert not any(inbox.iterdir())
    assert not any(settings.state_dir.joinpath("claimed").iterdir())


# -- odd names, links, FIFOs ----------------------------------------------------------------


def test_odd_names_each_become_their_own_job(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    inbox = settings.paths.inbox
    nfc = unicodedata.normalize("NFC", "café crème")
    nfd = unicodedata.normalize("NFD", "café crème")
    assert nfc != nfd and os.fsencode(nfc) != os.fsencode(nfd)
    long_stem = "Ünïcödé-" + "ж" * 119  # 246 bytes: 'NAME.png' is 250, near NAME_MAX
    assert 245 <= len(os.fsencode(long_stem + ".png")) <= 255
    stems = [nfc, nfd, "with  spaces and (brackets)", "-starts-with-dash", "--", long_stem]
    expected = {}
    for i, stem in enumerate(stems):
        expected |= drop_pair(inbox, stem, seed=10 + i, prompt=f"prompt {i}")

    service = Service(settings, StubGenerator(), watch=False)
    results = service.run_once()
    assert len(results) == len(stems)
    assert all(r.ok for r in results), [(r.job.name, r.error) for r in results if not r.ok]

    done = filed(settings.paths.done)
    assert sorted(done) == sorted(expected)
    for name, [job] in done.items():
        assert digest(job / name) == expected[name], name
        assert len(os.fsencode(job.name)) <= JOB_NAME_MAX
        master = settings.paths.outputs / job.name / f"{job.name}.mp4"
        assert master.is_file() and master.stat().st_size > 0
        meta = json.loads((settings.paths.outputs / job.name / f"{job.name}.json").read_bytes())
        assert meta["inputs"]["image"] in (name, name.removesuffix(".txt") + ".png")
    # NFC and NFD are two jobs, and their folders do not look alike to a client that
    # normalises names (macOS over SMB): the second one got a -2.
    [nfc_job], [nfd_job] = done[f"{nfc}.png"], done[f"{nfd}.png"]
    assert nfc_job != nfd_job
    assert unicodedata.normalize("NFC", nfc_job.name) != unicodedata.normalize("NFC", nfd_job.name)
    # The long name: the files keep it whole; the JOB folder name is cut on a character boundary.
    [long_job] = done[f"{long_stem}.png"]
    assert long_job.name.startswith(long_stem[:50]) and len(long_job.name) < len(long_stem)
    assert (long_job / f"{long_stem}.png").is_file()
    assert not any(inbox.iterdir())


LATIN1 = os.fsdecode(b"caf\xe9 latin-1")  # not UTF-8 (an NFS client in a Latin-1 locale)


def _run_latin1(tmp_path: Path) -> tuple[Settings, dict[str, str], list[object]]:
    settings = settings_for(tmp_path)
    expected = drop_pair(settings.paths.inbox, LATIN1, seed=20)
    after = drop_pair(settings.paths.inbox, "zz-after", seed=21)
    results = Service(settings, StubGenerator(), watch=False).run_once()
    return settings, expected | after, list(results)


def test_a_name_that_is_not_utf8_is_neither_lost_nor_doubled_nor_fatal(tmp_path: Path) -> None:
    settings, expected, results = _run_latin1(tmp_path)
    assert len(results) == 2
    found = filed(settings.paths.done) | filed(settings.paths.failed)
    assert sorted(found) == sorted(expected)
    for name, [job] in found.items():
        assert digest(job / name) == expected[name]
    assert "zz-after.png" in filed(settings.paths.done), "the daemon must carry on after it"
    assert not any(settings.paths.inbox.iterdir())


def test_a_name_that_is_not_utf8_makes_a_clip(tmp_path: Path) -> None:
    settings, _, _ = _run_latin1(tmp_path)
    assert f"{LATIN1}.png" in filed(settings.paths.done)


def test_links_and_fifos_are_never_read_moved_or_waited_on(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, watch={"pair_timeout": 0})
    inbox = settings.paths.inbox
    secret = tmp_path / "secret.txt"
    secret.write_text("the launch codes")
    secret_stat = secret.stat()
    (inbox / "evil.png").symlink_to(secret)  # an image that is a link
    (inbox / "evil.txt").write_text("steal it")
    good_image = png_bytes(seed=5)
    (inbox / "sneaky.png").write_bytes(good_image)
    (inbox / "sneaky.txt").symlink_to(secret)  # a prompt that is a link
    os.mkfifo(inbox / "pipe.png")
    os.mkfifo(inbox / "pipe.txt")
    (inbox / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    ok = drop_pair(inbox, "good", seed=6)

    service = Service(settings, StubGenerator(), watch=False)
    box: list[object] = []
    runner = threading.Thread(target=lambda: box.append(service.run_once()), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the daemon blocked (on a FIFO?)"
    assert box, "run_once raised"

    [good] = filed(settings.paths.done)["good.png"]
    assert {n: digest(good / n) for n in ok} == ok
    # The links and FIFOs are where they were, and the secret is as it was.
    assert os.readlink(inbox / "evil.png") == str(secret)
    assert os.readlink(inbox / "sneaky.txt") == str(secret)
    assert (inbox / "pipe.png").is_fifo() and (inbox / "pipe.txt").is_fifo()
    assert (inbox / "linkdir").is_symlink()
    assert secret.read_text() == "the launch codes"
    assert (secret.stat().st_mtime_ns, secret.stat().st_ino) == (secret_stat.st_mtime_ns, secret_stat.st_ino)
    # The plain files that came with them were judged alone (lone prompt, lone image).
    failed = filed(settings.paths.failed)
    assert sorted(failed) == ["evil.txt", "sneaky.png"]
    # Nothing anywhere the daemon writes holds the secret.
    for base in (settings.paths.outputs, settings.paths.done, settings.paths.failed, settings.state_dir):
        for p in base.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert b"launch codes" not in p.read_bytes(), p


# -- the inbox going away ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_inbox_briefly_gone_nothing_fails_nothing_is_taken_twice(
    tmp_path: Path, mode: str, captured_logs: list[dict[str, object]]
) -> None:
    settings = settings_for(tmp_path, watch={"mode": mode, "settle_seconds": 0.5, "pair_timeout": 60})
    inbox = settings.paths.inbox
    away = tmp_path / "unmounted"
    with Running(settings) as service:
        first = drop_pair(inbox, "before", seed=7)
        wait_for(lambda: "before.png" in filed(settings.paths.done), 30, "the first job")
        later = drop_pair(inbox, "during", seed=8)  # still settling when the share goes
        os.rename(inbox, away)
        wait_for(lambda: service.scanner.missing, 10, "the scanner to report the inbox missing")
        time.sleep(1.5)  # several polls and more than the settle time with no inbox
        assert not inbox.exists(), "the daemon must not make an inbox on an unmounted share"
        assert not entries(settings.paths.failed)
        os.rename(away, inbox)
        wait_for(lambda: "during.png" in filed(settings.paths.done), 30, "the job that waited out the gap")
        assert not service.scanner.missing
    done = filed(settings.paths.done)
    assert sorted(done) == sorted([*first, *later])
    assert all(len(jobs) == 1 for jobs in done.values())
    assert not entries(settings.paths.failed)
    events = [e["event"] for e in captured_logs]
    missing = [e for e in events if isinstance(e, str) and e.startswith("inbox missing")]
    back = [e for e in events if isinstance(e, str) and e.startswith("inbox is back")]
    assert len(missing) == 1 and len(back) == 1, events


def test_run_once_exit_code_counts_every_job_of_a_big_backlog(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    inbox = tmp_path / "inbox"
    (inbox / "a-broken.png").write_bytes(b"not an image")  # the first job fails
    (inbox / "a-broken.txt").write_text("waves")
    for i in range(59):
        drop_pair(inbox, f"ok-{i:02d}", seed=i)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    once = subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)], env=env, capture_output=True, timeout=300
    )
    assert len(entries(tmp_path / "failed")) == 1 and len(entries(tmp_path / "done")) == 59
    assert once.returncode == 1, "a failed job must make `run --once` exit 1"


# -- one daemon per folders ---------------------------------------------------------------------


def test_a_second_daemon_on_the_same_folders_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, watch={"poll_interval": 0.2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([*CLI, "run", "--config", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / ".i2vd" / "daemon.lock"
        wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text(), 60, "the first daemon")
        second = subprocess.run(
            [*CLI, "run", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "already" in second.stderr, second.stderr
        once = subprocess.run(
            [*CLI, "run", "--once", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert once.returncode != 0 and "already" in once.stderr, once.stderr
        assert first.poll() is None, "the first daemon must keep running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 0
