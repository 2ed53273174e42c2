"""Links a share user plants below inbox/, outputs/, done/ and failed/ are never followed.

Share users must be able to write those four folders (they take results and drag failed jobs
back), so any folder or file below them may be a link to somewhere outside the share. Real
folders, the real tiny model and ffmpeg; the "outside" folder stands for anything the daemon
can write or read that the share user cannot.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

import helpers
import pytest
from helpers import Clock, digest, png_bytes
from PIL import Image
from structlog.testing import capture_logs

from daemon.config import load_settings
from daemon.config_sections import DEFAULT_IGNORE
from daemon.folders import safe_dirs
from daemon.folders.claim import claim, release
from daemon.folders.jobs import Folders
from daemon.folders.publish import error_text, finish_done, finish_failed
from daemon.folders.recover import recover
from daemon.folders.scan import Group, InboxScanner
from daemon.listeners.events import JobFinished
from daemon.listeners.share_page import PAGE, SharePage
from daemon.messages import RETRY_ADVICE
from daemon.service.loop import Service

WHEN = datetime(2026, 11, 22, 14, 30, 5)
SECRET = "TOP-SECRET-7f3a the service token"  # nothing in it that HTML would escape


def everything_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def drop(folders: Folders, name: str = "cat", rel: str = ".") -> tuple[Group, dict[str, str]]:
    d = folders.inbox / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.png").write_bytes(png_bytes(seed=3))
    (d / f"{name}.txt").write_text("a cat yawns")
    group = Group(Path(rel), name, images=[d / f"{name}.png"], sidecars=[d / f"{name}.txt"])
    return group, {p.name: digest(p) for p in group.files}


def plant(link: Path, target: Path) -> None:
    """What a share user can do: ``ln -s TARGET LINK`` in a folder they may write."""
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


# -- the daemon, end to end ---------------------------------------------------------------------


def test_links_planted_in_outputs_done_failed_carry_nothing_outside_and_the_daemon_goes_on(
    tmp_path: Path, tiny_model_dir: Path, tiny_generator
) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(
        helpers.write_config(tmp_path, str(tiny_model_dir), {"num_frames": 4, "steps": 2, "fps": 8})
    )
    p = settings.paths
    outside = tmp_path / "outside"
    for base in (p.outputs, p.done, p.failed):
        plant(base / "team", outside / base.name)
    team = p.inbox / "team"
    team.mkdir(parents=True)
    Image.new("RGB", (96, 64), (30, 90, 150)).save(team / "cat.png")
    (team / "cat.txt").write_text("a cat yawns")
    (team / "bad.png").write_bytes(b"this is not a picture")
    (team / "bad.txt").write_text("a dog")
    before = {p.name: digest(p) for p in team.iterdir()}

    with capture_logs() as logged:
        results = Service(settings, tiny_generator, watch=False).run_once()

    assert sorted(r.ok for r in results) == [False, True], "both jobs were made or failed, in turn"
    assert everything_in(outside) == ["done", "failed", "outputs"], "nothing was written outside"
    for base in (p.outputs, p.done, p.failed):
        assert os.readlink(base / "team") == str(outside / base.name), "the user's link is left alone"
    # Filed at the top of each folder instead, whole and byte-identical.
    [out] = [d for d in p.outputs.iterdir() if d.name.startswith("cat_")]
    assert (out / f"{out.name}.mp4").stat().st_size > 0
    [done] = list(p.done.glob("cat_*"))
    [failed] = list(p.failed.glob("bad_*"))
    assert {f.name: digest(f) for f in done.iterdir()} == {
        k: v for k, v in before.items() if k.startswith("cat")
    }
    kept = {f.name: digest(f) for f in failed.iterdir() if f.name.startswith("bad.")}
    assert kept == {k: v for k, v in before.items() if k.startswith("bad")}
    assert "image" in (failed / "error.txt").read_text()
    refused = [e for e in logged if e["log_level"] == "warning" and "refused" in e["event"]]
    assert {e["folder"] for e in refused} >= {
        str(p.outputs / "team"),
        str(p.done / "team"),
        str(p.failed / "team"),
    }
    assert all("is a link" in e["event"] for e in refused)


# -- filing, put-back, recovery -------------------------------------------------------------------


def test_cross_filesystem_filing_writes_nothing_through_a_link(folders: Folders, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temporary folder's")
    outside = tmp_path / "outside"
    with tempfile.TemporaryDirectory(dir=shm) as other:
        # The state folder on another disk: every move is a copy, an fsync and a rename.
        split = Folders(folders.inbox, folders.outputs, folders.done, folders.failed, Path(other) / "st")
        split.ensure()
        for base in (split.outputs, split.done, split.failed):
            plant(base / "a" / "b", outside / base.name)  # deeper than the first level
        group, before = drop(split, rel="a/b")
        job = claim(split, group, WHEN)
        assert job is not None
        (job.out / f"{job.name}.mp4").write_bytes(b"clip")
        assert finish_done(split, job) == split.outputs / job.name
        group2, before2 = drop(split, "dog", rel="a/b")
        job2 = claim(split, group2, WHEN)
        assert job2 is not None
        assert finish_failed(split, job2, "no luck") == split.failed / job2.name
        assert everything_in(outside) == ["done", "failed", "outputs"]
        assert (split.outputs / job.name / f"{job.name}.mp4").read_bytes() == b"clip"
        assert {p.name: digest(p) for p in (split.done / job.name).iterdir()} == before
        assert {n: digest(split.failed / job2.name / n) for n in before2} == before2
        assert not [
            p for base in (split.outputs, split.done) for p in base.iterdir() if p.name.startswith(".")
        ]


def test_a_folder_a_user_made_with_the_jobs_name_never_costs_its_inputs(folders: Folders) -> None:
    group, before = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    # JOB names are predictable (name and time): someone makes done/team/JOB first.
    squat = folders.done / "team" / job.name
    squat.mkdir(parents=True)
    (squat / "mine.txt").write_text("my own file")
    with capture_logs() as logged:
        finish_done(folders, job)
    assert everything_in(squat) == ["mine.txt"]
    beside = folders.done / "team" / f"{job.name}-2"
    assert {p.name: digest(p) for p in beside.iterdir()} == before
    assert any("already there" in e["event"] for e in logged)


def test_put_back_into_an_inbox_folder_swapped_for_a_link_moves_nothing_outside(
    folders: Folders, tmp_path: Path
) -> None:
    group, before = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    outside = tmp_path / "outside"
    (folders.inbox / "team").rmdir()
    plant(folders.inbox / "team", outside)
    assert release(folders, job) is True
    assert everything_in(outside) == []
    assert {n: digest(folders.inbox / n) for n in before} == before, "back at the top of the inbox"
    assert not job.dir.exists()


def test_recovery_removes_no_temporary_through_a_link(folders: Folders, tmp_path: Path) -> None:
    group, _ = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    outside = tmp_path / "outside"
    plant(folders.outputs / "team", outside)
    # A name shaped like the temporary of a crashed copy, in the folder the link points at.
    (outside / f".{job.name}.0123abcd.tmp").write_text("not the daemon's")
    (folders.outputs / f".{job.name}.89abcdef.tmp").write_text("a crash left this")
    recover(folders, max_attempts=3)
    assert everything_in(outside) == [f".{job.name}.0123abcd.tmp"]
    assert not (folders.outputs / f".{job.name}.89abcdef.tmp").exists(), "the top is where it files now"


def test_recovery_is_not_fooled_by_a_link_to_a_folder_holding_the_jobs_name(
    folders: Folders, tmp_path: Path
) -> None:
    group, before = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    outside = tmp_path / "outside"
    plant(folders.outputs / "team", outside)
    (outside / job.name).mkdir()  # "already published", as seen through the link
    again, _ = recover(folders, max_attempts=3)
    assert [j.name for j in again] == [job.name], "a job mid-way is run again, not filed as done"
    assert {n: digest(job.inputs / n) for n in before} == before
    assert everything_in(outside) == [job.name] and not any(folders.done.rglob("*.png"))


def test_recovery_brings_nothing_back_through_an_inbox_folder_swapped_for_a_link(
    folders: Folders, tmp_path: Path
) -> None:
    group, before = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    # A crash mid-claim: the image was still in the inbox; then the folder became a link to a
    # folder holding a file of the same name (the same bytes, even).
    image = job.inputs / "cat.png"
    outside = tmp_path / "outside"
    (outside).mkdir()
    os.rename(image, outside / "cat.png")
    (job.out).rmdir()
    for n in os.listdir(folders.inbox / "team"):
        os.unlink(folders.inbox / "team" / n)
    (folders.inbox / "team").rmdir()
    plant(folders.inbox / "team", outside)
    recover(folders, max_attempts=3)
    assert digest(outside / "cat.png") == before["cat.png"], "nothing taken from outside"
    assert not (job.inputs / "cat.png").exists()


def test_operator_may_make_the_base_folders_links(folders: Folders, tmp_path: Path) -> None:
    real = tmp_path / "big-disk" / "outputs"
    real.mkdir(parents=True)
    linked = Folders(folders.inbox, tmp_path / "outputs-link", folders.done, folders.failed, folders.state)
    linked.outputs.symlink_to(real, target_is_directory=True)
    group, _ = drop(linked, rel="team")
    job = claim(linked, group, WHEN)
    assert job is not None
    (job.out / f"{job.name}.mp4").write_bytes(b"clip")
    finish_done(linked, job)
    assert (real / "team" / job.name / f"{job.name}.mp4").read_bytes() == b"clip"


def test_open_under_refuses_links_and_files_at_any_depth(tmp_path: Path) -> None:
    base = tmp_path / "outputs"
    (base / "a").mkdir(parents=True)
    (base / "a" / "b").symlink_to(tmp_path, target_is_directory=True)
    (base / "f").write_text("a file where a folder should be")
    with pytest.raises(safe_dirs.NotAFolder, match="is a link"):
        safe_dirs.open_under(base, "a/b/c")
    with pytest.raises(safe_dirs.NotAFolder, match="is not a folder"):
        safe_dirs.open_under(base, "f/c")
    with pytest.raises(safe_dirs.NotAFolder):
        safe_dirs.open_under(base, "../x")
    assert not (tmp_path / "c").exists()
    fd = safe_dirs.open_under(base, "a/new/deeper")
    os.close(fd)
    assert (base / "a" / "new" / "deeper").is_dir()


# -- returned job folders in the inbox ------------------------------------------------------------


def returned_folder(folders: Folders) -> tuple[Group, Path]:
    """A failed job's folder dragged back into inbox/team, as the scanner reports it."""
    folder = folders.inbox / "team" / "cup_20261122_143005"
    folder.mkdir(parents=True)
    (folder / "cup.png").write_bytes(png_bytes(seed=5))
    (folder / "cup.txt").write_text("tea")
    (folder / "error.txt").write_text(error_text("The prompt file has a typo."))
    clock = Clock()
    scanner = InboxScanner(
        folders.inbox, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=120, clock=clock
    )
    scanner.scan()
    clock.t += 3
    [group] = scanner.scan()
    assert group.src_dir == Path("team/cup_20261122_143005")
    return group, folder


def test_a_link_named_error_txt_in_a_returned_folder_is_not_followed(
    folders: Folders, tmp_path: Path
) -> None:
    group, folder = returned_folder(folders)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n\n" + RETRY_ADVICE + "\n")  # even dressed up as the daemon's
    (folder / "error.txt").unlink()
    (folder / "error.txt").symlink_to(secret)  # swapped in after the scan
    job = claim(folders, group, WHEN)
    assert job is not None and sorted(job.files) == ["cup.png", "cup.txt"]
    assert secret.read_text().startswith(SECRET)
    assert os.readlink(folder / "error.txt") == str(secret), "not ours: the folder stays as the user left it"


def test_a_returned_folder_swapped_for_a_link_after_the_scan_is_not_taken_from(
    folders: Folders, tmp_path: Path
) -> None:
    group, folder = returned_folder(folders)
    outside = tmp_path / "outside"
    outside.mkdir()
    folder.rename(outside / folder.name)  # the very files the scan saw, now outside the share
    folder.symlink_to(outside / folder.name, target_is_directory=True)
    with capture_logs() as logged:
        assert claim(folders, group, WHEN) is None
    assert everything_in(outside) == [folder.name] + [
        f"{folder.name}/{n}" for n in ("cup.png", "cup.txt", "error.txt")
    ]
    assert not any(folders.claimed.rglob("*.png"))
    assert any("is a link" in e["event"] and e["folder"] == str(folder) for e in logged)


# -- the share page -------------------------------------------------------------------------------


def test_a_link_swapped_in_for_error_txt_never_puts_the_secret_on_the_page(
    folders: Folders, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    group, _ = drop(folders, rel="team")
    job = claim(folders, group, WHEN)
    assert job is not None
    where = finish_failed(folders, job, "The prompt file is empty.")
    (where / "error.txt").unlink()
    (where / "error.txt").symlink_to(secret)
    # After a restart the page is built from what is on disk (min_interval 0: each event is
    # written at once, not with the next status).
    page = SharePage(folders.outputs, folders.failed, min_interval=0.0)
    page.on_status({"state": "idle"})
    # An event that carries no text makes the page read the folder, too.
    page.on_job_finished(JobFinished(job.name, "failed", where, None, None))
    text = (folders.outputs / PAGE).read_text()
    assert job.name in text and SECRET not in text


def finished(folders: Folders, name: str) -> Path:
    group, _ = drop(folders, name)
    job = claim(folders, group, WHEN)
    assert job is not None
    (job.out / f"{job.name}.mp4").write_bytes(b"clip")
    (job.out / f"{job.name}.json").write_text(
        f'{{"job": "{job.name}", "prompt": "a {name} yawns", "master": "{job.name}.mp4"}}'
    )
    return finish_done(folders, job)


def test_links_in_a_finished_jobs_folder_never_reach_the_page(folders: Folders, tmp_path: Path) -> None:
    picture = tmp_path / "private.png"
    picture.write_bytes(png_bytes(seed=9))
    cat = finished(folders, "cat")
    (cat / f"{cat.name}.poster.png").symlink_to(picture)
    dog = finished(folders, "dog")
    fake = tmp_path / "fake.json"
    fake.write_text(f'{{"job": "{dog.name}", "prompt": "{SECRET}"}}')
    (dog / f"{dog.name}.json").unlink()
    (dog / f"{dog.name}.json").symlink_to(fake)
    page = SharePage(folders.outputs, folders.failed)  # a restart: built from what is on disk
    page.on_status({"state": "idle"})
    text = (folders.outputs / PAGE).read_text()
    assert "a cat yawns" in text, "the job with a plain record is listed"
    assert "<img" not in text, "a link in the poster's place is not shown as its picture"
    assert SECRET not in text
