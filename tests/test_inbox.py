"""Readiness and pairing on a real inbox folder, with an injected clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Clock

from daemon.config_sections import DEFAULT_IGNORE
from daemon.folders.scan import InboxScanner, split_name


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scanner(tmp_path: Path, clock: Clock) -> InboxScanner:
    return InboxScanner(tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=60, clock=clock)


def names(groups) -> list[str]:  # type: ignore[no-untyped-def]
    return [g.name for g in groups]


def test_split_name() -> None:
    assert split_name("my.cat.PNG") == ("my.cat", ".png")
    assert split_name("noext") == ("noext", "")
    assert split_name(".hidden") == (".hidden", "")


def test_pair_is_ready_only_after_settling(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    (tmp_path / "cat.png").write_bytes(b"x" * 10)
    (tmp_path / "cat.txt").write_text("hi")
    assert scanner.scan() == []
    clock.t += 2
    assert scanner.scan() == []
    clock.t += 1.5
    assert names(scanner.scan()) == ["cat"]


def test_a_growing_file_restarts_the_wait(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    img = tmp_path / "cat.png"
    img.write_bytes(b"x" * 10)
    (tmp_path / "cat.txt").write_text("hi")
    scanner.scan()
    for _ in range(5):  # a slow copy: a chunk every 2 s, each well inside the settle time
        clock.t += 2
        with open(img, "ab") as f:
            f.write(b"y" * 100)
        assert scanner.scan() == []
    clock.t += 3
    assert names(scanner.scan()) == ["cat"]


def test_same_size_rewrite_is_seen_through_mtime(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    img = tmp_path / "cat.png"
    img.write_bytes(b"\0" * 100)  # created empty-ish by a copy tool, then filled in place
    (tmp_path / "cat.txt").write_text("hi")
    scanner.scan()
    clock.t += 2
    img.write_bytes(b"\1" * 100)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert scanner.scan() == []
    clock.t += 2
    assert scanner.scan() == []


def test_lone_image_waits_for_pair_timeout(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    (tmp_path / "dog.jpg").write_bytes(b"x")
    scanner.scan()
    clock.t += 30
    assert scanner.scan() == [] and scanner.waiting == 1
    clock.t += 31
    [g] = scanner.scan()
    assert g.images and not g.sidecars


def test_two_sidecars_are_ready_at_once_to_be_failed(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    for n in ("cat.png", "cat.txt", "cat.json"):
        (tmp_path / n).write_bytes(b"x")
    scanner.scan()
    clock.t += 3
    [g] = scanner.scan()
    assert [p.name for p in g.sidecars] == ["cat.json", "cat.txt"]


def test_junk_links_and_fifos_are_ignored(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    for junk in (
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "._cat.png",
        "~$doc.txt",
        "a.part",
        "b.tmp",
        "c.crdownload",
    ):
        (tmp_path / junk).write_bytes(b"x")
    (tmp_path / "shadow.png").symlink_to("/etc/shadow")
    (tmp_path / "shadow.txt").write_text("steal")
    os.mkfifo(tmp_path / "pipe.png")
    scanner.scan()
    clock.t += 100
    [g] = scanner.scan()  # only the lone sidecar, after the pair timeout
    assert g.name == "shadow" and not g.images


def test_subfolders_are_grouped_separately(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(b"1")
        (tmp_path / d / "x.txt").write_text("p")
    scanner.scan()
    clock.t += 3
    assert sorted(str(g.rel_dir) for g in scanner.scan()) == ["a", "b"]


def test_memory_follows_the_inbox(tmp_path: Path, scanner: InboxScanner, clock: Clock) -> None:
    files = [tmp_path / f"f{i}.png" for i in range(50)]
    for f in files:
        f.write_bytes(b"x")
    scanner.scan()
    for f in files:
        f.unlink()
    scanner.scan()
    assert scanner._seen == {}


def test_the_daemons_own_files_are_never_inputs_but_look_alikes_are(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    from daemon.folders.publish import _error_text

    returned = tmp_path / "team" / "cup_20261122_143005"
    returned.mkdir(parents=True)
    (returned / "cup.png").write_bytes(b"png")
    (returned / "cup.txt").write_text("tea")
    (returned / "error.txt").write_bytes(_error_text("The prompt file has a typo."))
    (returned / "cup_20261122_143005.log").write_text("log lines")
    # A person's files that only look like ours: an error.png + error.txt pair, and a photo
    # named by a camera like a job folder, with its JSON prompt file.
    (tmp_path / "error.png").write_bytes(b"png")
    (tmp_path / "error.txt").write_text("an error message dissolves")
    (tmp_path / "IMG_20250101_120000.jpg").write_bytes(b"jpg")
    (tmp_path / "IMG_20250101_120000.json").write_text('{"prompt": "waves"}')
    # An error.txt of an earlier release, moved back alone: still recognised.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "error.txt").write_text(
        "bad\n\nTo try again, fix the problem and move the files back into the inbox.\n"
    )
    scanner.scan()
    clock.t += 3
    groups = {(g.rel_dir.as_posix(), g.name): g for g in scanner.scan()}
    assert sorted(groups) == [(".", "IMG_20250101_120000"), (".", "error"), ("team", "cup")]
    cup = groups[("team", "cup")]
    assert cup.src_dir == Path("team/cup_20261122_143005")
    assert sorted(p.name for p in cup.files) == ["cup.png", "cup.txt"]
    assert sorted(p.name for p in cup.leftovers) == ["cup_20261122_143005.log", "error.txt"]
    assert scanner.waiting == 0, "the daemon's files are not waiting for a partner"
    assert groups[(".", "error")].src_dir is None
