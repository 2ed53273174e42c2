"""The folder state machine on real folders: claim, finish, release, recover."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from helpers import digest

from daemon.folders import fsops, moves
from daemon.folders.claim import claim, release
from daemon.folders.jobs import RECORD, Folders
from daemon.folders.publish import finish_done, finish_failed
from daemon.folders.recover import recover
from daemon.folders.scan import Group

WHEN = datetime(2026, 11, 22, 14, 30, 5)


def drop(folders: Folders, name: str = "cat", rel: str = ".") -> Group:
    d = folders.inbox / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.png").write_bytes(os.urandom(5000))
    (d / f"{name}.txt").write_text("a cat yawns")
    return Group(Path(rel), name, images=[d / f"{name}.png"], sidecars=[d / f"{name}.txt"])


def test_claim_then_done_keeps_inputs_byte_identical(folders: Folders) -> None:
    group = drop(folders)
    before = {p.name: digest(p) for p in group.files}
    job = claim(folders, group, WHEN)
    assert job is not None and job.name == "cat_20261122_143005"
    assert not any(folders.inbox.iterdir()), "claimed files must leave the inbox"
    assert json.loads((job.dir / RECORD).read_text())["files"] == ["cat.png", "cat.txt"]
    (job.out / f"{job.name}.mp4").write_bytes(b"clip")
    out = finish_done(folders, job)
    assert out == folders.outputs / job.name and (out / f"{job.name}.mp4").read_bytes() == b"clip"
    done = folders.done / job.name
    assert {p.name: digest(p) for p in done.iterdir()} == before
    assert not job.dir.exists()


def test_name_clash_gets_a_suffix(folders: Folders) -> None:
    (folders.done / "cat_20261122_143005").mkdir()
    job2 = claim(folders, drop(folders), WHEN)
    job3 = claim(folders, drop(folders), WHEN)
    assert job2 is not None and job2.name == "cat_20261122_143005-2"
    assert job3 is not None and job3.name == "cat_20261122_143005-3"


def test_claim_of_a_vanished_file_gives_up_and_puts_back_the_rest(folders: Folders) -> None:
    group = drop(folders)
    group.sidecars[0].unlink()  # taken by someone else between scan and claim
    group.files  # noqa: B018 - the group still lists the sidecar, as a stale scan would
    assert claim(folders, group, WHEN) is None
    assert sorted(p.name for p in folders.inbox.iterdir()) == ["cat.png"]
    assert not any(folders.claimed.iterdir())


def test_failed_gets_originals_error_and_log(folders: Folders) -> None:
    group = drop(folders, rel="team/a")
    before = {p.name: digest(p) for p in group.files}
    job = claim(folders, group, WHEN)
    assert job is not None
    log = job.out / f"{job.name}.log"
    log.write_text("line\n")
    where = finish_failed(folders, job, "The prompt file is empty.", log)
    assert where == folders.failed / "team" / "a" / job.name
    assert "The prompt file is empty." in (where / "error.txt").read_text()
    assert (where / log.name).read_text() == "line\n"
    assert {n: digest(where / n) for n in before} == before
    assert not (folders.outputs / "team" / "a" / job.name).exists()


def test_release_returns_inputs_untouched(folders: Folders) -> None:
    group = drop(folders, rel="sub")
    before = {p.name: digest(p) for p in group.files}
    job = claim(folders, group, WHEN)
    assert job is not None
    release(folders, job)
    assert {p.name: digest(p) for p in (folders.inbox / "sub").iterdir()} == before
    assert not job.dir.exists()


def test_recover_requeues_an_interrupted_job_and_counts_the_attempt(folders: Folders) -> None:
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    (job.out / "half-written.mp4").write_bytes(b"x")
    again, exhausted = recover(folders, max_attempts=3)
    assert [j.name for j in again] == [job.name] and not exhausted
    assert again[0].attempts == 2 and not any(again[0].out.iterdir())
    assert json.loads((job.dir / RECORD).read_text())["attempts"] == 2


def test_recover_gives_up_after_max_attempts(folders: Folders) -> None:
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    for _ in range(2):
        again, exhausted = recover(folders, max_attempts=2)
    assert not again and [j.name for j in exhausted] == [job.name]


def test_recover_finishes_a_job_whose_outputs_were_published(folders: Folders) -> None:
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    moves.move(job.out, folders.outputs / job.name)  # crash right after step 1 of finish_done
    again, exhausted = recover(folders, max_attempts=3)
    assert not again and not exhausted
    assert sorted(p.name for p in (folders.done / job.name).iterdir()) == ["cat.png", "cat.txt"]
    assert not job.dir.exists()


def test_recover_drops_a_claim_whose_first_record_a_crash_cut_short(folders: Folders) -> None:
    """The first record is written straight to its name (``fsops.write_unseen``), before anything
    moves: cut short, it names nothing taken, and the pair is still in the inbox, untouched."""
    group = drop(folders)
    before = {p.name: digest(p) for p in folders.inbox.iterdir()}
    job = claim(folders, group, WHEN)
    assert job is not None
    whole = (job.dir / RECORD).read_bytes()
    release(folders, job)  # the pair back in the inbox, as before the claim
    job.dir.mkdir(parents=True)
    (job.dir / RECORD).write_bytes(whole[: len(whole) // 2])  # the kill came mid-write
    again, exhausted = recover(folders, max_attempts=3)
    assert not again and not exhausted
    assert not job.dir.exists()
    assert {p.name: digest(p) for p in folders.inbox.iterdir()} == before


def test_recover_finishes_a_failure_already_explained(folders: Folders) -> None:
    job = claim(folders, drop(folders), WHEN)
    assert job is not None
    fsops.write_atomic(job.inputs / "error.txt", b"why")
    recover(folders, max_attempts=3)
    assert (folders.failed / job.name / "error.txt").read_bytes() == b"why"


def test_move_across_filesystems_copies_then_removes(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temporary folder's")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        src = Path(other) / "tree"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "a.bin").write_bytes(os.urandom(3000))
        expect = digest(src / "sub" / "a.bin")
        moves.move(src, tmp_path / "tree")
        assert digest(tmp_path / "tree" / "sub" / "a.bin") == expect
        assert not src.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left behind"


def test_move_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        moves.move(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "b"
