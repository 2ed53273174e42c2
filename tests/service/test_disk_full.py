"""A full disk never stops the daemon, and share users can fill it themselves.

Each test mounts a real, small tmpfs (8 MB) as the share and fills it the way a person on the
share would: by copying a big file onto it until the disk says no more. The real ``i2vd run``
runs on it in a subprocess with the shipped ``[watch]`` values and the package's ``stub``
generator. One value differs from the shipped config: ``[limits] min_free_mb`` is 2, since the
shipped 1024 MB would not fit an 8 MB disk. Mounting needs root; elsewhere the tests are skipped,
saying why.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Clock, digest, drop, wait_for, write_config

from daemon.folders import fsops
from daemon.service.disk_room import CHECK_EVERY, HOLD_FIRST, DiskRoom, free_mb

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "daemon.cli"]
DISK_MB = 8
MIN_FREE_MB = 2
# Small clips and no recipes: the outputs of one job fit the small disk many times over.
GENERATION = {"num_frames": 2, "steps": 1, "fps": 8}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB tmpfs, mounted for the test and unmounted after it."""
    mount = tmp_path / "share"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    """What a person on the share does: copy a big file onto it until the disk is full."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    assert free_bytes(path) == 0
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path.parent if path.is_file() else path)
    return st.f_bavail * st.f_frsize


def env(**overrides: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return {**base, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **overrides}


class Daemon:
    """``i2vd run`` on the share, its log lines read as they come (the pipe never fills)."""

    def __init__(self, share: Path, model: str = "stub") -> None:
        self.share = share
        self.lines: list[dict[str, object]] = []
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(share / "config.toml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env(I2VD_MODEL__ID=model),
            cwd=share,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": line.rstrip()})

    def said(self, start: str) -> list[dict[str, object]]:
        return [e for e in list(self.lines) if str(e.get("event", "")).startswith(start)]

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "status", *args, "--config", str(self.share / "config.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(),
            check=False,
        )

    def status_json(self) -> dict[str, object]:
        return json.loads(self.status("--json").stdout)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.reader.join(10)

    def log(self) -> str:
        return "\n".join(json.dumps(e) for e in self.lines[-40:])


@pytest.fixture
def share(small_disk: Path) -> Path:
    write_config(
        small_disk,
        "stub",
        GENERATION,
        limits={"min_free_mb": MIN_FREE_MB},
        output={"default_recipes": []},
    )
    (small_disk / "inbox").mkdir()
    return small_disk


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def job_folders(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def made(share: Path, name: str) -> Path | None:
    """The job's master clip once it is in outputs/."""
    return next(iter(sorted(share.glob(f"outputs/{name}_*/{name}_*.mp4"))), None)


def temp_files(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if p.name.endswith(".tmp")]


# -- filled while it runs --------------------------------------------------------------------------


def test_a_share_user_filling_the_disk_holds_new_jobs_until_there_is_room(
    share: Path, daemons: list[Daemon]
) -> None:
    daemon = Daemon(share)
    daemons.append(daemon)
    wait_for(lambda: daemon.said("watching"), 60, "the daemon to start")
    wait_for(lambda: daemon.status_json().get("running"), 30, "a first status")

    # A person copies a big file onto the share until it is full, frees a little of it, drops a
    # photo and its prompt, and goes on copying until not one byte is left.
    filler = fill(share / "outputs" / "holiday-backup.bin")
    os.truncate(filler, filler.stat().st_size - 256 * 1024)
    before = drop(share / "inbox", "cat")
    fill(filler)

    def held() -> dict[str, object] | None:
        s = daemon.status_json()
        return s if s.get("paused_reason") and "cat" in s.get("queue", []) else None

    status = wait_for(held, 30, "status to say the disk is full while cat waits")
    assert isinstance(status, dict)
    assert status["running"] is True
    reason = str(status["paused_reason"])
    assert reason.startswith("disk nearly full: 0 MB free on ") and f"need {MIN_FREE_MB} MB" in reason
    shown = daemon.status()
    assert "disk nearly full" in shown.stdout, shown.stdout
    page = (share / "outputs" / "index.html").read_text()
    assert "short of disk space" in page and "disk nearly full" in page

    # Several looks at the disk later: still waiting, nothing claimed, nothing failed, still up.
    time.sleep(3 * CHECK_EVERY)
    assert daemon.proc.poll() is None, daemon.log()
    assert {p.name: digest(p) for p in (share / "inbox").glob("cat.*")} == before
    assert job_folders(share / "failed") == [] and made(share, "cat") is None

    # The person deletes the big file: the job is made by itself.
    filler.unlink()
    wait_for(lambda: made(share, "cat"), 60, "the clip once there is room")
    [done] = job_folders(share / "done")
    assert {p.name: digest(p) for p in done.iterdir()} == before
    wait_for(lambda: not daemon.status_json().get("paused_reason"), 30, "status to stop saying disk full")

    assert daemon.stop() == 0, daemon.log()
    # Said once, not once per look at the disk; the way back said too.
    assert len(daemon.said("taking no new jobs: disk nearly full")) == 1, daemon.log()
    assert daemon.said("room on disk again"), daemon.log()
    assert temp_files(share / ".i2vd", share / "outputs") == []


def test_a_job_whose_files_cannot_be_written_goes_back_to_the_inbox_and_is_made_later(
    share: Path, daemons: list[Daemon]
) -> None:
    # A stand-in GPU that takes 8 s a job: the disk fills while the job generates.
    daemon = Daemon(share, model="stub:8")
    daemons.append(daemon)
    wait_for(lambda: daemon.said("watching"), 60, "the daemon to start")
    before = drop(share / "inbox", "dog")
    wait_for(lambda: (daemon.status_json().get("current") or {}).get("job"), 30, "the job to start")
    filler = fill(share / "done" / "holiday-backup.bin")

    went_back = wait_for(lambda: daemon.said("disk full: the job's files could not be"), 60, "it goes back")
    assert isinstance(went_back, list) and "No space left on device" in str(went_back[0]["error"])
    assert {p.name: digest(p) for p in (share / "inbox").glob("dog.*")} == before
    assert job_folders(share / "failed") == [] and made(share, "dog") is None
    assert daemon.proc.poll() is None, daemon.log()
    wait_for(lambda: daemon.status_json().get("paused_reason"), 30, "status to say why dog waits")

    filler.unlink()
    wait_for(lambda: made(share, "dog"), 90, "the clip once there is room")
    assert {p.name: digest(p) for p in job_folders(share / "done")[0].iterdir()} == before
    assert job_folders(share / "failed") == []
    assert daemon.stop() == 0, daemon.log()
    assert not list((share / ".i2vd" / "claimed").iterdir())


# -- full before it starts -------------------------------------------------------------------------


def test_it_starts_on_a_disk_with_not_one_byte_free_says_so_and_waits(
    share: Path, daemons: list[Daemon]
) -> None:
    before = drop(share / "inbox", "owl")
    filler = fill(share / "done" / "holiday-backup.bin")

    daemon = Daemon(share)
    daemons.append(daemon)
    wait_for(lambda: daemon.said("watching"), 60, "the daemon to start on the full disk")
    [said] = daemon.said("taking no new jobs: disk nearly full: 0 MB free")
    assert f"need {MIN_FREE_MB} MB" in str(said["event"])
    # Not one byte for status.json yet: that is said, once.
    assert len(daemon.said("cannot write status.json")) == 1, daemon.log()
    time.sleep(3 * CHECK_EVERY)
    assert daemon.proc.poll() is None, daemon.log()
    assert {p.name: digest(p) for p in (share / "inbox").glob("owl.*")} == before
    assert job_folders(share / "failed") == []

    filler.unlink()
    wait_for(lambda: made(share, "owl"), 60, "the clip once there is room")
    status = daemon.status_json()
    assert status["running"] is True and not status["paused_reason"]
    assert daemon.said("status.json written again"), daemon.log()
    assert daemon.stop() == 0, daemon.log()


def test_a_model_that_cannot_be_built_on_the_full_disk_stops_the_start_with_one_clear_line(
    share: Path,
) -> None:
    # The tiny model is built on first use into the state folder's models/, here on the full disk.
    # Operators keep the model cache elsewhere ([model] cache_dir); this is what happens if not.
    fill(share / "done" / "holiday-backup.bin")
    r = subprocess.run(
        [*CLI, "run", "--config", str(share / "config.toml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(I2VD_MODEL__ID="tiny"),
        cwd=share,
        check=False,
    )
    assert r.returncode == 2, r.stderr[-3000:]  # a start that cannot happen: one line, exit 2
    [line] = [x for x in r.stderr.splitlines() if x.startswith("i2vd: cannot start:")]
    assert "No space left on device" in line
    assert f"the disk of the model cache {share / '.i2vd' / 'models'} is full" in line
    assert [p.name for p in (share / ".i2vd" / "models").iterdir()] == []  # no half-built model left


def test_a_restart_on_a_full_disk_still_says_so_in_status_and_on_the_page(
    share: Path, daemons: list[Daemon]
) -> None:
    first = Daemon(share)
    daemons.append(first)
    wait_for(lambda: first.status_json().get("running"), 60, "a first run to write its status")
    assert first.stop() == 0
    filler = fill(share / "done" / "holiday-backup.bin")

    again = Daemon(share)
    daemons.append(again)
    status = wait_for(
        lambda: (s := again.status_json()).get("running") and s.get("paused_reason") and s,
        60,
        "the restarted daemon to say the disk is full, in status.json",
    )
    assert isinstance(status, dict) and str(status["paused_reason"]).startswith("disk nearly full: 0 MB")
    assert "short of disk space" in (share / "outputs" / "index.html").read_text()
    assert free_bytes(share) == 0
    filler.unlink()
    assert again.stop() == 0, again.log()


# -- how long new jobs wait after a job did not fit ---------------------------------------------------


def test_a_job_that_did_not_fit_holds_new_jobs_until_room_is_gained_or_a_growing_back_off(
    small_disk: Path,
) -> None:
    clock = Clock()
    room = DiskRoom([small_disk], lambda: 1, clock=clock)
    assert room.reason() is None
    # A quota the disk's free space does not show: only the back-off ends the hold.
    room.no_room("Disk quota exceeded")
    assert "Disk quota exceeded" in str(room.reason()) and "jobs wait" in str(room.reason())
    clock.t += HOLD_FIRST - 1
    assert room.reason() is not None
    clock.t += CHECK_EVERY  # the disk is looked at every CHECK_EVERY seconds, not at each call
    assert room.reason() is None
    room.no_room("Disk quota exceeded")  # again: twice as long
    clock.t += HOLD_FIRST + 1
    assert room.reason() is not None
    clock.t += HOLD_FIRST
    assert room.reason() is None
    room.written()  # a job's files were written: back to the first back-off
    room.no_room("Disk quota exceeded")
    clock.t += HOLD_FIRST + 1
    assert room.reason() is None

    # A full disk: said as such while it is; once room is gained the hold ends at once.
    filler = fill(small_disk / "done" / "holiday-backup.bin")
    room.no_room("No space left on device")
    assert str(room.reason()).startswith("disk nearly full: 0 MB free")
    filler.unlink()
    clock.t += CHECK_EVERY
    assert room.reason() is None


# -- the write path itself ---------------------------------------------------------------------------


def test_a_status_file_is_rewritten_in_place_on_a_full_disk_and_no_temporary_file_stays(
    small_disk: Path,
) -> None:
    status = small_disk / "status.json"
    fsops.write_padded(status, json.dumps({"state": "idle"}).encode())
    filler = fill(small_disk / "filler.bin")
    with pytest.raises(OSError) as caught:
        fsops.write_atomic(small_disk / "other.json", b"{}" * 4096)
    assert caught.value.errno == errno.ENOSPC
    fsops.write_padded(status, json.dumps({"state": "busy", "paused_reason": "disk full"}).encode())
    assert json.loads(status.read_text()) == {"state": "busy", "paused_reason": "disk full"}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin", "status.json"]
    # More than the file holds: refused whole, the old text stays readable.
    with pytest.raises(OSError):
        fsops.write_padded(status, b'{"x": "' + b"y" * 3 * fsops.PADDED_BLOCK + b'"}')
    assert json.loads(status.read_text())["state"] == "busy"
    filler.unlink()


def test_a_link_put_in_place_of_the_page_is_never_written_through_on_a_full_disk(small_disk: Path) -> None:
    outputs = small_disk / "outputs"
    outputs.mkdir()
    precious = small_disk / "precious.txt"
    precious.write_bytes(b"x" * 3 * fsops.PADDED_BLOCK)
    page = outputs / "index.html"
    page.symlink_to(precious)
    fill(small_disk / "filler.bin")
    with pytest.raises(OSError):
        fsops.write_padded(page, b"<html>written through</html>")
    assert precious.read_bytes() == b"x" * 3 * fsops.PADDED_BLOCK
    assert page.is_symlink()
    assert free_mb(small_disk) == 0


def test_webhook_notices_are_still_sent_when_the_spool_cannot_be_written(small_disk: Path) -> None:
    from structlog.testing import capture_logs

    from daemon.listeners.webhooks import WebhookSender
    from tests.listeners.test_webhooks import Receiver, done_event, wait_until

    spool = small_disk / ".i2vd" / "webhooks"
    spool.mkdir(parents=True)
    receiver = Receiver(statuses=[503]).start()
    sender = WebhookSender(spool, on_done=[receiver.url()], backoff_seconds=0.05, max_attempts=5)
    filler = fill(small_disk / "done" / "holiday-backup.bin")
    try:
        with capture_logs() as logged:
            sender.on_job_finished(done_event(small_disk, "cat_20260101_120000"))
            sender.on_job_finished(done_event(small_disk, "dog_20260101_120000"))
            # Held in memory, sent all the same; the one refused first is retried from memory.
            wait_until(lambda: len(receiver.delivered()) == 2 and not sender.pending(), "both notices")
    finally:
        sender.close()
        receiver.close()
        filler.unlink()
    assert sorted(r["body"]["job"] for r in receiver.delivered()) == [
        "cat_20260101_120000",
        "dog_20260101_120000",
    ]
    assert [e["error"] for e in logged if e["event"].startswith("cannot write the webhook spool")] == [
        "No space left on device"
    ]
    assert list(spool.iterdir()) == []
