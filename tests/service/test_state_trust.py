"""The state folder and the config are the daemon's alone, and what it reads back from them is checked.

The mechanisms, at unit level and through a real start (``Service.run_once`` with the stub
model, real folders): the state folder made private, the refusals for a state folder or config
someone else could change, forged claim records and inputs, a forged private-Ray note, spooled
webhooks to URLs no longer configured, URLs with credentials kept out of the logs, and the seed
a resumed job keeps. Tests run as root; another user is a uid with no account (``STRANGER``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from helpers import png_bytes, write_config
from structlog.testing import capture_logs

from daemon import logs
from daemon.cli.common import check_trust
from daemon.cluster import private
from daemon.config import load_settings
from daemon.engine.stub import StubGenerator
from daemon.errors import JobError
from daemon.folders import trust
from daemon.folders.claim import claim
from daemon.folders.jobs import RECORD, Folders, Job
from daemon.folders.scan import Group
from daemon.job.finish import Result
from daemon.job.prepare import prepare
from daemon.service.check import run_checks
from daemon.service.lock import DaemonLocked, take_lock
from daemon.service.loop import Service

STRANGER = 54321  # a uid with no account: "another user"
WHEN = datetime(2026, 11, 22, 14, 30, 5)
JOB = "cat_20261122_143005"
SECRET = "TOPSECRET-do-not-leak-7f3a"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def umask_0002() -> Iterator[None]:
    """The service's UMask=0002 (group-writable files), as systemd/i2vd.service sets it."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


# -- the state folder is made private ----------------------------------------------------------


def test_state_folder_is_made_0700_and_an_open_one_tightened_once(tmp_path: Path, umask_0002: None) -> None:
    folders = Folders(*(tmp_path / n for n in ("inbox", "outputs", "done", "failed", ".i2vd")))
    folders.ensure()
    assert mode(folders.state) == 0o700
    assert mode(folders.claimed) == 0o700
    assert mode(folders.inbox) == 0o775  # the shared folders keep the umask: share users write them

    # Folders it has to make above the state folder are not group-writable either.
    deep = tmp_path / "srv" / "i2vd" / ".i2vd"
    trust.secure_state(deep)
    assert (mode(deep.parent.parent), mode(deep.parent), mode(deep)) == (0o755, 0o755, 0o700)

    folders.state.chmod(0o775)
    with capture_logs() as logged:
        folders.ensure()
        folders.ensure()
    assert mode(folders.state) == 0o700
    tightened = [e for e in logged if "made it private" in e["event"]]
    assert len(tightened) == 1 and tightened[0]["was"] == "0o775"


def test_a_state_folder_of_another_user_is_refused_naming_the_fix(tmp_path: Path) -> None:
    state = tmp_path / ".i2vd"
    state.mkdir(mode=0o700)
    os.chown(state, STRANGER, -1)
    with pytest.raises(trust.Untrusted) as refused:
        trust.secure_state(state)
    line = str(refused.value)
    assert "\n" not in line and str(STRANGER) in line
    assert f"chown root {state} && chmod 700 {state}" in line
    assert mode(state) == 0o700 and os.stat(state).st_uid == STRANGER  # not touched


@pytest.mark.parametrize("parent_mode", [0o775, 0o777, 0o2775])
def test_a_parent_others_can_write_is_refused_unless_sticky(tmp_path: Path, parent_mode: int) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    srv.chmod(parent_mode)
    with pytest.raises(trust.Untrusted, match=rf"^{srv} can be written by .*fix: chmod go-w {srv}"):
        trust.secure_state(srv / ".i2vd")
    srv.chmod(parent_mode | 0o1000)  # sticky, like /tmp: no one can rename our folder away
    trust.secure_state(srv / ".i2vd")
    # A folder further up counts as much as the nearest one.
    (srv / "a" / "b").mkdir(parents=True)
    srv.chmod(0o775)
    with pytest.raises(trust.Untrusted, match=rf"^{srv} can be written"):
        trust.secure_state(srv / "a" / "b" / ".i2vd")


def test_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir(mode=0o755)
    os.chown(srv, STRANGER, -1)
    with pytest.raises(trust.Untrusted, match=rf"^{srv} belongs to user {STRANGER}.*fix: chown root {srv}"):
        trust.secure_state(srv / ".i2vd")


def test_a_state_folder_reached_through_a_link_is_checked_where_it_really_is(tmp_path: Path) -> None:
    real = tmp_path / "shared"
    real.mkdir()
    real.chmod(0o777)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(trust.Untrusted, match=rf"^{real} can be written"):
        trust.secure_state(tmp_path / "link" / ".i2vd")


def test_config_others_can_change_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, "stub", {})
    config.chmod(0o644)
    trust.check_config(config)  # root's, 0644: fine
    config.chmod(0o664)
    with pytest.raises(trust.Untrusted, match=rf"config {config} can be written by group .*chmod go-w"):
        trust.check_config(config)
    config.chmod(0o640)
    os.chown(config, STRANGER, -1)
    with pytest.raises(trust.Untrusted, match=rf"belongs to user {STRANGER}.*chown root:\S+ {config}"):
        trust.check_config(config)
    os.chown(config, 0, -1)
    folder = tmp_path / "etc"
    folder.mkdir()
    inside = folder / "config.toml"
    inside.write_bytes(config.read_bytes())
    folder.chmod(0o777)
    with pytest.raises(trust.Untrusted, match=rf"^{folder} can be written by everyone"):
        trust.check_config(inside)


def test_run_and_check_refuse_in_one_line_with_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "stub", {})
    config.chmod(0o666)
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    refusal = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(refusal) == 1 and refusal == proc.stderr.splitlines()[-1:]
    assert f"chmod go-w {config}" in refusal[0]
    assert not (tmp_path / ".i2vd").exists(), "nothing is made before the config is trusted"

    config.chmod(0o644)
    state = tmp_path / ".i2vd"
    state.mkdir()
    os.chown(state, STRANGER, -1)
    checks = list(itertools.islice(run_checks(load_settings(config), lambda s: iter(()), config=config), 3))
    assert checks[1][:2] == (True, "config file")
    assert checks[2][:2] == (False, "state folder") and f"chown root {state}" in checks[2][2]


def test_a_config_with_webhook_secrets_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    config = write_config(tmp_path, "stub", {}, webhooks={"on_done": ["https://hooks.example.org/T/B/X"]})
    config.chmod(0o644)
    settings = load_settings(config)
    with capture_logs() as logged:
        check_trust(config, settings, logs.get())
    [warning] = [e for e in logged if e["log_level"] == "warning"]
    assert "read by everyone" in warning["event"] and f"chmod 640 {config}" in warning["event"]
    config.chmod(0o640)
    os.chown(config, 0, os.getegid())
    with capture_logs() as logged:
        check_trust(config, settings, logs.get())
    assert not [e for e in logged if e["log_level"] == "warning"]


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(folders: Folders, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    (folders.state / "daemon.lock").symlink_to(target)
    with pytest.raises(DaemonLocked, match="cannot take the lock"):
        take_lock(folders.state)
    assert target.read_text() == "keep me"


# -- claim records and inputs read back as a stranger's ---------------------------------------


def drop(folders: Folders, name: str = "cat", rel: str = ".") -> Group:
    d = folders.inbox / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.png").write_bytes(png_bytes(2))
    (d / f"{name}.txt").write_text("a cat yawns")
    return Group(Path(rel), name, images=[d / f"{name}.png"], sidecars=[d / f"{name}.txt"])


def forge_claim(folders: Folders, record: dict[str, object], where: str = JOB) -> Path:
    """A claimed job folder as a stranger could lay it out: the record given, real inputs, out/."""
    job_dir = folders.claimed / where
    (job_dir / "inputs").mkdir(parents=True)
    (job_dir / "out").mkdir()
    (job_dir / "inputs" / "cat.png").write_bytes(png_bytes(1))
    (job_dir / "inputs" / "cat.txt").write_text("a cat yawns")
    full = {
        "job": JOB,
        "stem": "cat",
        "rel_dir": ".",
        "files": ["cat.png", "cat.txt"],
        "claimed_at": WHEN.isoformat(),
        "attempts": 1,
        "sigs": {},
        "src_dir": None,
        **record,
    }
    (job_dir / RECORD).write_text(json.dumps(full))
    return job_dir


def start_config(folders: Folders, tmp_path: Path) -> Path:
    """The config of a daemon on these folders (the shipped [watch] values; stub model)."""
    paths = {n: str(getattr(folders, n)) for n in ("inbox", "outputs", "done", "failed", "state")}
    generation = {"num_frames": 2, "steps": 1}
    return write_config(tmp_path, "stub", generation, paths=paths, output={"default_recipes": []})


def restart(config: Path) -> list[Result]:
    """A daemon start: recovery, then every job ready (the inbox is empty here)."""
    return Service(load_settings(config), StubGenerator(), watch=False).run_once()


def every_file(root: Path) -> dict[Path, bytes]:
    """Every plain file under ``root`` and its bytes (links are not followed)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"rel_dir": "OUTSIDE"}, id="absolute-rel_dir"),
        pytest.param({"rel_dir": "../outside"}, id="dotdot-rel_dir"),
        # With a file missing from inputs/, recovery would take it from src_dir.
        pytest.param({"src_dir": "OUTSIDE"}, id="absolute-src_dir"),
        pytest.param({"job": "../outside_20261122_143005"}, id="job-name-with-a-path"),
        pytest.param({"job": "outside"}, id="not-a-job-name"),
        pytest.param({"files": ["../../../outside/cat.txt", "cat.png"]}, id="file-with-a-path"),
        pytest.param({"attempts": "1; rm -rf /"}, id="attempts-not-a-number"),
    ],
)
def test_a_forged_claim_record_is_left_alone_and_nothing_outside_is_touched(
    folders: Folders, tmp_path: Path, record: dict[str, object]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cat.txt").write_text("someone else's file")
    record = {k: (str(outside) if v == "OUTSIDE" else v) for k, v in record.items()}
    job_dir = forge_claim(folders, record)
    (job_dir / "inputs" / "cat.txt").unlink()  # as if a crash came mid-claim
    config = start_config(folders, tmp_path)
    before = every_file(tmp_path)
    top = sorted(tmp_path.iterdir())
    with capture_logs() as logged:
        results = restart(config)
    assert results == []
    assert sorted(tmp_path.iterdir()) == top, "something was made beside the folders"
    assert sorted(p.name for p in outside.iterdir()) == ["cat.txt"]
    assert not any(folders.done.iterdir()) and not any(folders.failed.iterdir())
    # The forged folder is left exactly as it was, for an operator to look at.
    assert {p: b for p, b in every_file(tmp_path).items() if job_dir in p.parents} == {
        p: b for p, b in before.items() if job_dir in p.parents
    }
    [refused] = [e for e in logged if "claim record not trusted" in e["event"]]
    assert refused["folder"] == str(job_dir)


@pytest.mark.parametrize("sub", ["out", "inputs"])
def test_a_claim_folder_that_links_outside_is_left_alone(folders: Folders, tmp_path: Path, sub: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("someone else's file")
    job_dir = forge_claim(folders, {})
    shutil.rmtree(job_dir / sub)
    (job_dir / sub).symlink_to(outside)
    config = start_config(folders, tmp_path)
    with capture_logs() as logged:
        restart(config)
    assert [p.name for p in outside.iterdir()] == ["precious"]
    assert (job_dir / sub).is_symlink()
    assert not any(folders.done.iterdir()) and not any(folders.failed.iterdir())
    assert [e["problem"] for e in logged if "not trusted" in e["event"]] == [f"{sub} is not a folder"]


def test_an_input_linked_to_a_secret_never_shows_the_secret(folders: Folders, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    job_dir = forge_claim(folders, {})
    (job_dir / "inputs" / "cat.txt").unlink()
    (job_dir / "inputs" / "cat.txt").symlink_to(secret)
    restart(start_config(folders, tmp_path))
    for path, data in every_file(tmp_path).items():
        if path != secret:
            assert SECRET.encode() not in data, f"the secret reached {path}"
    assert secret.read_text() == SECRET and mode(secret) == 0o600


def test_a_linked_or_special_input_fails_the_job_without_being_read(folders: Folders, tmp_path: Path) -> None:
    """A link that appears in inputs/ after recovery's check: the readers never follow it."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    (job.inputs / "cat.txt").unlink()
    (job.inputs / "cat.txt").symlink_to(secret)
    settings = load_settings(write_config(tmp_path, "stub", {}))
    with pytest.raises(JobError, match="is a link or a special file") as failed:
        prepare(job, settings, StubGenerator().info, logs.get(), queued_at=WHEN)
    assert SECRET not in str(failed.value)
    (job.inputs / "cat.txt").unlink()
    (job.inputs / "cat.txt").write_text("a cat yawns")
    (job.inputs / "cat.png").rename(tmp_path / "real.png")
    (job.inputs / "cat.png").symlink_to(tmp_path / "real.png")
    with pytest.raises(JobError, match="is a link or a special file"):
        prepare(job, settings, StubGenerator().info, logs.get(), queued_at=WHEN)


def test_from_record_accepts_what_claim_writes(folders: Folders) -> None:
    job = claim(folders, drop(folders, rel="sub/deeper"), WHEN)
    assert job is not None
    again = Job.from_record(job.dir, json.loads((job.dir / RECORD).read_text()))
    assert again == job


# -- a resumed job keeps its seed --------------------------------------------------------------


def test_a_job_resumed_after_a_crash_keeps_its_seed(folders: Folders, tmp_path: Path) -> None:
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    config = start_config(folders, tmp_path)
    first = prepare(job, load_settings(config), StubGenerator().info, logs.get(), queued_at=WHEN)
    drawn = first.request.seed
    assert json.loads((job.dir / RECORD).read_text())["seed"] == drawn  # kept before any model work
    # kill -9 here, mid-generation: the claim stays with out/ made; the next start resumes it.
    (job.out / f"{job.name}.mp4").write_bytes(b"half a clip")
    [result] = restart(config)
    assert result.ok
    record = json.loads((folders.outputs / JOB / f"{JOB}.json").read_text())
    assert record["attempts"] == 2
    assert (record["parameters"]["seed"], record["parameters"]["seed_from"]) == (drawn, "random")


@pytest.mark.parametrize("sidecar, expected", [("a cat yawns", (7, "config")), ("seed = 9", (9, "sidecar"))])
def test_the_record_says_where_the_seed_came_from(
    folders: Folders, tmp_path: Path, sidecar: str, expected: tuple[int, str]
) -> None:
    """A seed set in [generation] is the config's, not the prompt file's (it was once recorded so)."""
    group = drop(folders)
    if sidecar.startswith("seed"):
        group.sidecars[0].unlink()
        group = replace(group, sidecars=[group.sidecars[0].with_suffix(".toml")])
        group.sidecars[0].write_text(f'prompt = "a cat yawns"\n{sidecar}\n')
    assert claim(folders, group, WHEN) is not None
    paths = {n: str(getattr(folders, n)) for n in ("inbox", "outputs", "done", "failed", "state")}
    generation = {"num_frames": 2, "steps": 1, "seed": 7}
    config = write_config(tmp_path, "stub", generation, paths=paths, output={"default_recipes": []})
    [result] = restart(config)
    assert result.ok
    record = json.loads((folders.outputs / JOB / f"{JOB}.json").read_text())
    assert (record["parameters"]["seed"], record["parameters"]["seed_from"]) == expected


def test_the_seed_drawn_at_claim_is_in_the_first_claim_record(folders: Folders, tmp_path: Path) -> None:
    """The loop draws the seed when it claims: the record is written once, and checking the job
    before any model work keeps it without writing the record again (one write and its fsyncs
    fewer per job)."""
    job = claim(folders, drop(folders), WHEN, seed=12345)
    assert job is not None
    before = os.stat(job.dir / RECORD)
    assert json.loads((job.dir / RECORD).read_text())["seed"] == 12345
    config = start_config(folders, tmp_path)
    prepared = prepare(job, load_settings(config), StubGenerator().info, logs.get(), queued_at=WHEN)
    assert prepared.request.seed == 12345
    after = os.stat(job.dir / RECORD)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# -- a private Ray's leftovers ------------------------------------------------------------------


def holder(folder: Path, **popen: object) -> subprocess.Popen[bytes]:
    """A process that keeps a file open in ``folder``, as a stray Ray agent does."""
    with open(folder / "held.log", "wb") as f:
        return subprocess.Popen(["sleep", "120"], stdout=f, **popen)  # type: ignore[call-overload]


def forge_mark(state: Path, folder: Path | str, pid: int = 999_999) -> None:
    (state / private.MARK).write_text(json.dumps({"pid": pid, "temp_dir": str(folder)}))


def test_a_forged_ray_note_ends_nothing_and_removes_nothing(folders: Folders, tmp_path: Path) -> None:
    victims = [tmp_path / "victim", Path(os.path.dirname(tmp_path)) / "i2vd-ray-forged00"]
    procs = []
    try:
        for victim in victims:
            victim.mkdir(mode=0o700, exist_ok=True)
            procs.append(holder(victim))
        os.chown(victims[1], STRANGER, -1)  # named like ours, but another user's
        for victim in victims:
            forge_mark(folders.state, victim)
            with capture_logs() as logged:
                assert private.reap(folders.state) == []
            assert not (folders.state / private.MARK).exists()
            assert any("did not make" in e["event"] for e in logged)
        time.sleep(0.2)
        assert all(p.poll() is None for p in procs), "a process was ended"
        assert all((v / "held.log").exists() for v in victims), "a folder was removed"
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for v in victims:
            shutil.rmtree(v, ignore_errors=True)


def test_a_ray_note_that_is_a_link_is_dropped(folders: Folders, tmp_path: Path) -> None:
    real = tmp_path / "mark.json"
    real.write_text(json.dumps({"pid": 999_999, "temp_dir": str(tmp_path)}))
    (folders.state / private.MARK).symlink_to(real)
    assert private.reap(folders.state) == []
    assert tmp_path.exists() and real.exists() and not os.path.lexists(folders.state / private.MARK)


def test_a_killed_daemons_own_ray_leftovers_are_ended_but_not_another_users(folders: Folders) -> None:
    folder = private.make(folders.state)
    assert mode(folder) == 0o700 and mode(folders.state / private.MARK) == 0o600
    ray = Path(private.ray_dir(folder))
    ray.mkdir()
    ray.chmod(0o777)  # as Ray leaves its folder: world-writable, but only reachable through ours
    ours = holder(ray)
    theirs = holder(ray, user=STRANGER)
    try:
        ended = private.reap(folders.state)
        assert ended == [ours.pid]
        assert ours.wait(10) == -9
        assert theirs.poll() is None, "another user's process was signalled"
        assert not folder.exists() and not (folders.state / private.MARK).exists()
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait()
