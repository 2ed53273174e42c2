"""kill -9 at random moments, many times, then prove nothing was lost, doubled or half-written.

The daemon runs as ``i2vd run`` would (``python -m daemon.cli run``), as a real subprocess,
with the ``stub`` generator (0.05 s per job, no model work) and real ffmpeg. It is killed
with SIGKILL at random moments (fixed seed), restarted each time, and finally run with
``--once`` until the inbox is empty. Then every input must be in exactly one job folder,
byte-identical; every published output folder whole (its JOB.json present, its master
decoding to the right frame count); nothing left under the state folder's claimed/.

Below that, each crash point of the state machine is visited deliberately: the folder state
a crash leaves at that instant is made with the real operations, stopped half-way, and
recovery must finish it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import av
import pytest
from helpers import digest, png_bytes
from PIL import Image

from daemon.config import load_settings
from daemon.engine.stub import StubGenerator
from daemon.folders import fsops, moves
from daemon.folders.claim import claim, release
from daemon.folders.jobs import RECORD, RETURNING, Folders
from daemon.folders.publish import finish_done
from daemon.folders.recover import recover
from daemon.folders.scan import Group, InboxScanner
from daemon.service.loop import Service, folders_of

# Drives kill -9 of real daemon processes: seconds each (`pytest -m 'not slow'` leaves it out).
pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "daemon.cli"]
PAIRS = 40
KILLS = 15
NUM_FRAMES = 3
WHEN = datetime(2026, 11, 22, 14, 30, 5)


def write_config(root: Path) -> Path:
    # About crash points, not readiness: files are taken as soon as they are seen, so the kills
    # land on claims, generations and filings rather than on waiting.
    config = root / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[model]",
                'id = "stub:0.05"',
                "[watch]",
                "settle_seconds = 0",
                "pair_timeout = 0",
                "poll_interval = 0.1",
                "[generation]",
                f"num_frames = {NUM_FRAMES}",
                "steps = 2",
                "[output]",
                # One recipe besides the master: two ffmpeg outputs that a kill can catch half-way.
                'default_recipes = ["poster"]',
                "[limits]",
                # Every job must end done: none may be set aside for having been killed too often.
                "max_attempts = 1000",
                "",
            ]
        )
    )
    return config


def inputs_in(base: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for job in base.iterdir() if base.exists() else []:
        for f in job.iterdir():
            if f.name != "error.txt" and not f.name.endswith(".log"):
                found.setdefault(f.name, []).append(job)
    return found


def test_kill_nine_at_random_moments_loses_doubles_and_half_writes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    expected: dict[str, str] = {}
    for i in range(PAIRS):
        image, prompt = png_bytes(i), f"job {i}: waves roll in".encode()
        (inbox / f"pair-{i:02d}.png").write_bytes(image)
        (inbox / f"pair-{i:02d}.txt").write_bytes(prompt)
        expected[f"pair-{i:02d}.png"], expected[f"pair-{i:02d}.txt"] = digest(image), digest(prompt)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    lock = tmp_path / ".i2vd" / "daemon.lock"
    rng = random.Random(20261122)
    logs = tmp_path / "daemon-logs"
    logs.mkdir()
    kills_while_running = 0
    for n in range(KILLS):
        with open(logs / f"run-{n:02d}.log", "wb") as log:
            proc = subprocess.Popen([*CLI, "run", "--config", str(config)], env=env, stderr=log, stdout=log)
            if rng.random() < 0.75:
                # Most kills land while it works: from the moment it holds the lock (set-up,
                # recovery, claims, generation, encoding, filing).
                deadline = time.monotonic() + 60
                while proc.poll() is None and time.monotonic() < deadline:
                    if lock.exists() and f"pid {proc.pid}" in lock.read_text():
                        break
                    time.sleep(0.01)
                kills_while_running += 1
            time.sleep(rng.uniform(0.05, 1.5))
            assert proc.poll() is None, f"the daemon exited by itself (run {n}): see {log.name}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    # Finish: run until the inbox is empty (and whatever was claimed is done).
    for _ in range(3):
        final = subprocess.run(
            [*CLI, "run", "--once", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert final.returncode == 0, final.stderr[-3000:]
        if not any(inbox.iterdir()):
            break
    assert not any(inbox.iterdir()), sorted(p.name for p in inbox.iterdir())

    # Every input in exactly one job folder, byte-identical; none failed (the stub cannot fail).
    done, failed = inputs_in(tmp_path / "done"), inputs_in(tmp_path / "failed")
    assert not failed, f"failed after kills: {sorted(failed)}"
    assert sorted(done) == sorted(expected), "inputs lost (or unexpected files) in done/"
    doubled = {name: jobs for name, jobs in done.items() if len(jobs) != 1}
    assert not doubled, f"taken more than once: {doubled}"
    for name, [job] in done.items():
        assert digest(job / name) == expected[name], f"{name} changed on its way to done/"
    # Each pair stayed together.
    for i in range(PAIRS):
        assert done[f"pair-{i:02d}.png"] == done[f"pair-{i:02d}.txt"]

    # Outputs: one whole folder per done job, nothing half-written, nothing extra.
    outputs = tmp_path / "outputs"
    out_jobs = sorted(p.name for p in outputs.iterdir() if p.is_dir())
    assert out_jobs == sorted(p.name for p in (tmp_path / "done").iterdir())
    for name in out_jobs:
        folder = outputs / name
        files = sorted(p.name for p in folder.iterdir())
        assert not [f for f in files if f.startswith(".")], f"temporary files left in {name}: {files}"
        assert {f"{name}.json", f"{name}.mp4", f"{name}.poster.png", f"{name}.log"} <= set(files), files
        meta = json.loads((folder / f"{name}.json").read_text())
        assert meta["job"] == name and meta["parameters"]["num_frames"] == NUM_FRAMES
        with av.open(str(folder / f"{name}.mp4")) as container:
            frames = sum(1 for _ in container.decode(container.streams.video[0]))
        assert frames == NUM_FRAMES, f"{name}.mp4 has {frames} frames"
        with Image.open(folder / f"{name}.poster.png") as poster:
            poster.load()

    # Nothing left in the state folder's claimed/ (not even an empty reservation).
    claimed = tmp_path / ".i2vd" / "claimed"
    assert not any(claimed.rglob("*")), sorted(str(p) for p in claimed.rglob("*"))

    # The kills did hit jobs mid-way: some were resumed after a crash.
    text = "".join(p.read_text(errors="replace") for p in sorted(logs.iterdir())) + final.stderr
    assert kills_while_running >= KILLS // 2
    assert "resuming job interrupted by a crash" in text, (
        "no kill caught a job mid-way: the test proved little"
    )


# -- each crash point, visited deliberately -----------------------------------------------------


def ready_group(folders: Folders, name: str = "cat", rel: str = ".") -> tuple[Group, dict[str, str]]:
    """Drop a pair and let the real scanner judge it ready (settle 0: these tests visit crash points)."""
    d = folders.inbox / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.png").write_bytes(png_bytes(1))
    (d / f"{name}.txt").write_text("a cat yawns")
    scanner = InboxScanner(
        folders.inbox, ignore=[".*"], settle_seconds=0, pair_timeout=0, clock=time.monotonic
    )
    [group] = [g for g in scanner.scan() if g.name == name and g.rel_dir == Path(rel)]
    return group, {p.name: digest(p) for p in group.files}


def run_recovered(folders: Folders, tmp_path: Path) -> None:
    """What a restart does: recover, then process what is ready (the real Service, stub model;
    no settle wait: this is about what recovery left, not about readiness)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\ninbox = "{folders.inbox}"\noutputs = "{folders.outputs}"\ndone = "{folders.done}"\n'
        f'failed = "{folders.failed}"\nstate = "{folders.state}"\n'
        "[watch]\nsettle_seconds = 0\npair_timeout = 0\npoll_interval = 0.05\n"
        "[generation]\nnum_frames = 2\nsteps = 1\n[output]\ndefault_recipes = []\n"
    )
    settings = load_settings(config)
    assert folders_of(settings) == folders
    Service(settings, StubGenerator(), watch=False).run_once()


def assert_done_once(folders: Folders, before: dict[str, str]) -> None:
    done = inputs_in(folders.done)
    assert sorted(done) == sorted(before)
    for name, [job] in done.items():
        assert digest(job / name) == before[name]
    assert not inputs_in(folders.failed)
    assert not any(folders.inbox.iterdir())
    assert not any(folders.claimed.rglob("*")), list(folders.claimed.rglob("*"))


def test_crash_mid_claim_is_completed_and_the_job_runs(folders: Folders, tmp_path: Path) -> None:
    group, before = ready_group(folders)
    job = claim(folders, group, WHEN)
    assert job is not None
    # The instant after the first rename of the claim: the image moved, the prompt not yet,
    # and out/ (made last) not there.
    os.rename(job.inputs / "cat.txt", folders.inbox / "cat.txt")
    job.out.rmdir()
    run_recovered(folders, tmp_path)
    assert_done_once(folders, before)
    [done_job] = folders.done.iterdir()
    assert (
        json.loads((folders.outputs / done_job.name / f"{done_job.name}.json").read_text())["attempts"] == 1
    )


def test_crash_mid_claim_never_takes_a_new_file_of_the_same_name(folders: Folders, tmp_path: Path) -> None:
    group, _ = ready_group(folders)
    job = claim(folders, group, WHEN)
    assert job is not None
    os.rename(job.inputs / "cat.txt", tmp_path / "old.txt")
    job.out.rmdir()
    # While the daemon was down the user replaced the prompt with a new one (another inode).
    (folders.inbox / "cat.txt").write_text("a different prompt, still being written")
    again, _ = recover(folders, max_attempts=3)
    [resumed] = again
    assert resumed.files == ["cat.png"], "the new file must not be pulled into the old claim"
    assert (folders.inbox / "cat.txt").read_text().startswith("a different prompt")


def test_crash_after_reservation_or_half_record_leaves_nothing(folders: Folders) -> None:
    (folders.claimed / "cat_20261122_143005").mkdir(parents=True)  # mkdir won, nothing else
    half = folders.claimed / "sub" / "dog_20261122_143005"
    half.mkdir(parents=True)
    (half / ".claim.json.0123abcd.tmp").write_text('{"job": "dog_2')  # killed mid-write
    norecord = folders.claimed / "eel_20261122_143005"
    norecord.mkdir()
    fsops.write_json_atomic(
        norecord / RECORD,
        {
            "job": "eel_20261122_143005",
            "stem": "eel",
            "rel_dir": ".",
            "files": ["eel.png"],
            "claimed_at": WHEN.isoformat(),
            "attempts": 1,
        },
    )
    again, exhausted = recover(folders, max_attempts=3)
    assert not again and not exhausted
    assert not any(folders.claimed.rglob("*")), list(folders.claimed.rglob("*"))


def test_crash_while_putting_back_finishes_putting_back(folders: Folders) -> None:
    group, before = ready_group(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    # A cold stop was putting the job back: the marker is written, one file is back.
    fsops.write_atomic(job.dir / RETURNING, b"")
    os.rename(job.inputs / "cat.png", folders.inbox / "team" / "cat.png")
    again, exhausted = recover(folders, max_attempts=3)
    assert not again and not exhausted
    assert {p.name: digest(p) for p in (folders.inbox / "team").iterdir()} == before
    assert not any(folders.claimed.rglob("*"))


def test_release_never_overwrites_a_file_dropped_meanwhile(folders: Folders, tmp_path: Path) -> None:
    group, before = ready_group(folders)
    job = claim(folders, group, WHEN)
    assert job is not None
    (folders.inbox / "cat.png").write_bytes(b"a new cat, dropped while the old one was worked on")
    assert release(folders, job) is False
    assert (folders.inbox / "cat.png").read_bytes().startswith(b"a new cat")
    assert {p.name: digest(p) for p in job.inputs.iterdir()} == before, "the claimed files stay whole"


def test_release_with_the_share_unmounted_keeps_the_job_claimed(folders: Folders, tmp_path: Path) -> None:
    group, before = ready_group(folders)
    job = claim(folders, group, WHEN)
    assert job is not None
    os.rename(folders.inbox, tmp_path / "away")
    assert release(folders, job) is False
    assert not folders.inbox.exists(), "no inbox may be made where the share should be mounted"
    assert {p.name: digest(p) for p in job.inputs.iterdir()} == before


def test_crash_between_publishing_outputs_and_filing_inputs(folders: Folders, tmp_path: Path) -> None:
    group, before = ready_group(folders)
    job = claim(folders, group, WHEN)
    assert job is not None
    (job.out / f"{job.name}.mp4").write_bytes(b"clip")
    moves.move(job.out, folders.outputs / job.name)  # step 1 of finish_done, then the kill
    run_recovered(folders, tmp_path)
    assert_done_once(folders, before)
    assert (folders.outputs / job.name / f"{job.name}.mp4").read_bytes() == b"clip"


def test_crash_mid_move_across_filesystems_keeps_exactly_one_copy(folders: Folders, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temporary folder's")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        # The state folder on another disk than the share: every move is copy + rename + remove.
        split = Folders(folders.inbox, folders.outputs, folders.done, folders.failed, Path(other) / "st")
        split.ensure()
        group, before = ready_group(split)
        job = claim(split, group, WHEN)
        assert job is not None and not any(split.inbox.iterdir())
        finish_done(split, job)
        done_job = split.done / job.name
        assert {p.name: digest(p) for p in done_job.iterdir()} == before

        # Now the crash: the copy of inputs/ was renamed into done/ but the original not yet
        # removed, and a temporary of an unfinished copy lies beside it.
        group, before2 = ready_group(split, name="dog")
        job2 = claim(split, group, WHEN)
        assert job2 is not None
        (job2.out / f"{job2.name}.mp4").write_bytes(b"clip")
        moves.move(job2.out, split.outputs / job2.name)
        moves._copy_tree_synced(job2.inputs, split.done / job2.name)
        (split.done / f".{job2.name}.0123abcd.tmp").mkdir()
        recover(split, max_attempts=3)
        assert {p.name: digest(p) for p in (split.done / job2.name).iterdir()} == before2
        assert not [p for p in split.done.iterdir() if p.name.startswith(".")]
        assert not any(split.claimed.rglob("*"))


def test_a_claim_the_state_folder_refuses_leaves_the_files_in_the_inbox(folders: Folders) -> None:
    group, before = ready_group(folders, rel="team")
    # The state folder cannot take the claim (here a file stands where its folder must go;
    # in life: a full or read-only disk). No exception may reach the main loop.
    (folders.claimed / "team").write_text("in the way")
    assert claim(folders, group, WHEN) is None
    assert {p.name: digest(p) for p in (folders.inbox / "team").iterdir()} == before
    (folders.claimed / "team").unlink()
    job = claim(folders, group, WHEN)
    assert job is not None and sorted(job.files) == sorted(before)
