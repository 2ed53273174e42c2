"""Readiness and pairing on a real inbox folder, with an injected clock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import structlog
from helpers import Clock, nested

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
    assert scanner.tracked == 50
    for f in files:
        f.unlink()
    scanner.scan()
    assert scanner.tracked == 0 and scanner.waiting == 0


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
    # A cancelled job dragged back: its error.txt ends differently (nothing to fix), and is ours too.
    from daemon.messages import CANCELLED_ERROR, RERUN_ADVICE

    cancelled = tmp_path / "team" / "mug_20261122_143010"
    cancelled.mkdir()
    (cancelled / "mug.png").write_bytes(b"png")
    (cancelled / "mug.txt").write_text("coffee")
    text = _error_text(CANCELLED_ERROR.format(how="with the file mug.cancel"), RERUN_ADVICE)
    assert b"fix the problem" not in text and b"drag this whole folder back" in text
    (cancelled / "error.txt").write_bytes(text)
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
    assert sorted(groups) == [(".", "IMG_20250101_120000"), (".", "error"), ("team", "cup"), ("team", "mug")]
    assert sorted(p.name for p in groups[("team", "mug")].files) == ["mug.png", "mug.txt"]
    cup = groups[("team", "cup")]
    assert cup.src_dir == Path("team/cup_20261122_143005")
    assert sorted(p.name for p in cup.files) == ["cup.png", "cup.txt"]
    assert sorted(p.name for p in cup.leftovers) == ["cup_20261122_143005.log", "error.txt"]
    assert scanner.waiting == 0, "the daemon's files are not waiting for a partner"
    assert groups[(".", "error")].src_dir is None


# -- what each file is: images, prompt files, companions -----------------------------------


def test_each_file_is_an_image_a_prompt_file_or_a_companion() -> None:
    from daemon.folders.names import group_of, sort_inputs

    assert group_of("IMG_0001.jpg") == ("IMG_0001", "image")
    assert group_of("IMG_0001.xmp") == ("IMG_0001", "companion")
    assert group_of("IMG_0002.AAE") == ("IMG_0002", "companion")
    assert group_of("IMG_3.CR2") == ("IMG_3", "companion")
    assert group_of("cat.json") == ("cat", "prompt")
    # Tools that name their file after the whole photo name: grouped with the photo, never a prompt.
    assert group_of("IMG_4.CR2.xmp") == ("IMG_4", "companion")
    assert group_of("IMG_5.jpg.json") == ("IMG_5", "companion")
    assert group_of("my.cat.json") == ("my.cat", "prompt")
    # RAW + JPEG: the JPEG is the image.
    assert sort_inputs(["IMG_3.txt", "IMG_3.CR2", "IMG_3.JPG"]) == (
        ["IMG_3.JPG"],
        ["IMG_3.txt"],
        ["IMG_3.CR2"],
    )
    # Anything else goes along beside an image, and is taken for the image when there is none
    # (the job then fails saying it is not one).
    assert sort_inputs(["a.HEIC", "a.MOV", "a.txt"]) == (["a.HEIC"], ["a.txt"], ["a.MOV"])
    assert sort_inputs(["a.pdf", "a.txt"]) == (["a.pdf"], ["a.txt"], [])
    assert sort_inputs(["a.png", "a.jpg", "a.xmp"]) == (["a.jpg", "a.png"], [], ["a.xmp"])


def test_image_exts_are_what_pillow_decodes() -> None:
    from PIL import Image

    from daemon.folders.names import IMAGE_EXTS, SIDECAR_EXTS
    from daemon.job import sidecar

    Image.init()
    plugin_only = {".heic", ".heif", ".avif", ".avifs"}  # decoded by a plugin where installed
    assert IMAGE_EXTS - plugin_only <= set(Image.registered_extensions())
    assert not IMAGE_EXTS & {".pdf", ".eps", ".ps", ".mpg", ".mpeg", ".wmf", ".emf", ".h5", ".palm"}
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTS)
    assert sidecar.SIDECAR_EXTS is SIDECAR_EXTS


@pytest.mark.parametrize(
    "files, image, companions",
    [
        (["IMG_0001.jpg", "IMG_0001.xmp", "IMG_0001.txt"], "IMG_0001.jpg", ["IMG_0001.xmp"]),
        (["IMG_0002.png", "IMG_0002.AAE", "IMG_0002.txt"], "IMG_0002.png", ["IMG_0002.AAE"]),
        (
            ["IMG_3.CR2", "IMG_3.JPG", "IMG_3.txt", "IMG_3.CR2.xmp"],
            "IMG_3.JPG",
            ["IMG_3.CR2", "IMG_3.CR2.xmp"],
        ),
    ],
)
def test_companions_make_no_clash_and_go_with_the_job(
    tmp_path: Path, scanner: InboxScanner, clock: Clock, files: list[str], image: str, companions: list[str]
) -> None:
    for n in files:
        (tmp_path / n).write_bytes(b"x")
    scanner.scan()
    clock.t += 3
    [g] = scanner.scan()
    assert g.complete and [p.name for p in g.images] == [image]
    assert sorted(p.name for p in g.companions) == sorted(companions)
    assert sorted(p.name for p in g.files) == sorted(files) and set(g.sigs) == set(g.files)


def test_a_companion_alone_is_no_job_and_never_waits(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "IMG_9.xmp").write_bytes(b"x")
    (tmp_path / "IMG_9.CR2").write_bytes(b"raw")
    (tmp_path / "IMG_8.jpg.json").write_text('{"title": "takeout"}')
    scanner.scan()
    clock.t += 1000
    assert scanner.scan() == []
    assert scanner.waiting == 0 and scanner.pending == [] and scanner.next_ready_in is None
    # Its photo arrives later: they go together.
    (tmp_path / "IMG_9.jpg").write_bytes(b"jpg")
    (tmp_path / "IMG_9.txt").write_text("waves")
    scanner.scan()
    clock.t += 3
    [g] = scanner.scan()
    assert sorted(p.name for p in g.files) == ["IMG_9.CR2", "IMG_9.jpg", "IMG_9.txt", "IMG_9.xmp"]


def test_a_raw_file_with_a_prompt_but_no_image_waits_then_goes_to_be_failed(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "IMG_7.NEF").write_bytes(b"raw")
    (tmp_path / "IMG_7.txt").write_text("waves")
    scanner.scan()
    clock.t += 10
    assert scanner.scan() == [] and scanner.pending == [("IMG_7", "waiting for its image")]
    clock.t += 60
    [g] = scanner.scan()  # the job says what is wrong, and the RAW file goes to failed/ with it
    assert not g.images and [p.name for p in g.companions] == ["IMG_7.NEF"]


# -- hostile shapes -------------------------------------------------------------------------


def test_deep_nesting_is_cut_at_max_depth_and_said_once(tmp_path: Path, clock: Clock) -> None:
    scanner = InboxScanner(
        tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=60, clock=clock, max_depth=8
    )
    with nested(tmp_path, 1100), structlog.testing.capture_logs() as logs:
        for depth, stem in ((0, "top"), (8, "deepest"), (9, "too-deep")):
            folder = tmp_path.joinpath(*["d"] * depth)
            (folder / f"{stem}.png").write_bytes(b"x")
            (folder / f"{stem}.txt").write_text("p")
        scanner.scan()
        clock.t += 3
        ready = scanner.scan()
        clock.t += 100  # a full rescan or more, and the pair timeout
        assert scanner.scan() == ready
    assert sorted(g.name for g in ready) == ["deepest", "top"]
    assert scanner.waiting == 0, "what is too deep is not waiting (run --once must end)"
    said = [e for e in logs if "levels deep" in str(e["event"])]
    assert len(said) == 1 and said[0]["folder"] == "/".join(["d"] * 8)


def test_a_failed_job_dragged_back_at_the_deepest_level_is_found(tmp_path: Path, clock: Clock) -> None:
    from daemon.folders.publish import _error_text

    scanner = InboxScanner(
        tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=60, clock=clock, max_depth=2
    )
    returned = tmp_path / "a" / "b" / "cup_20261122_143005"
    returned.mkdir(parents=True)
    (returned / "cup.png").write_bytes(b"png")
    (returned / "cup.txt").write_text("tea")
    (returned / "error.txt").write_bytes(_error_text("A typo."))
    scanner.scan()
    clock.t += 3
    [g] = scanner.scan()
    assert g.rel_dir == Path("a/b") and g.src_dir == Path("a/b/cup_20261122_143005")


def test_too_many_folders_are_not_all_looked_into(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.folders import scan

    monkeypatch.setattr(scan, "MAX_FOLDERS", 5)
    scanner = InboxScanner(tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=60, clock=clock)
    for i in range(20):
        (tmp_path / f"f{i:02d}").mkdir()
    (tmp_path / "top.png").write_bytes(b"x")
    (tmp_path / "top.txt").write_text("p")
    with structlog.testing.capture_logs() as logs:
        scanner.scan()
        clock.t += 3
        assert [g.name for g in scanner.scan()] == ["top"]
    assert len(scanner._folders) == 5
    assert len([e for e in logs if "folders in the inbox" in str(e["event"])]) == 1


def test_a_folder_swapped_for_a_link_is_not_followed_out(tmp_path: Path, clock: Clock) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (outside / "secret.txt").write_text("p")
    scanner = InboxScanner(inbox, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=60, clock=clock)
    (inbox / "team").mkdir()
    (inbox / "team" / "cat.png").write_bytes(b"x")
    scanner.scan()  # team/ is known now; then it becomes a link to a folder outside
    (inbox / "team").rename(tmp_path / "away")
    (inbox / "team").symlink_to(outside)
    for _ in range(3):
        clock.t += 40
        assert scanner.scan() == []
    assert scanner.tracked == 0


# -- the incremental view ---------------------------------------------------------------------


def age(*folders: Path) -> None:
    """Make folders look untouched for a minute, so their listing is trusted and not redone."""
    past = time.time_ns() - 60 * 10**9
    for folder in folders:
        os.utime(folder, ns=(past, past))


class Listings:
    """Counts the folders listed (os.scandir), to show an unchanged inbox is not listed again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = os.scandir

        def counting(path):  # type: ignore[no-untyped-def]
            self.count += 1
            return real(path)

        monkeypatch.setattr(os, "scandir", counting)


def test_an_unchanged_inbox_is_not_listed_again_until_the_full_rescan(
    tmp_path: Path, scanner: InboxScanner, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.folders.scan import FULL_RESCAN_SECONDS

    (tmp_path / "sub").mkdir()
    for i in range(50):
        (tmp_path / f".junk{i}").write_bytes(b"")
        (tmp_path / f"lone{i}.png").write_bytes(b"x")
    age(tmp_path, tmp_path / "sub")
    listings = Listings(monkeypatch)
    scanner.scan()
    assert listings.count == 2
    clock.t += 3
    scanner.scan()
    clock.t += 3
    scanner.scan()
    assert listings.count == 2 and scanner.waiting == 50 and scanner.tracked == 50  # no entry for junk
    clock.t += FULL_RESCAN_SECONDS
    scanner.scan()
    assert listings.count == 4


def test_a_file_rewritten_in_an_unchanged_folder_settles_again(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    from daemon.folders.scan import signature

    img = tmp_path / "cat.png"
    img.write_bytes(b"\0" * 100)
    (tmp_path / "cat.txt").write_text("hi")
    age(tmp_path)
    scanner.scan()
    clock.t += 3
    [g] = scanner.scan()  # ready, waiting for a free GPU
    img.write_bytes(b"\1" * 100)  # rewritten in place: the folder does not change
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    age(tmp_path)
    clock.t += 1
    assert scanner.scan() == [], "a ready file rewritten in place must settle again"
    clock.t += 3
    [again] = scanner.scan()
    assert again.sigs[img] == signature(img.stat()) != g.sigs[img]


def test_a_waiting_file_rewritten_in_place_is_looked_at_again_before_it_is_taken(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    from daemon.folders.scan import signature

    img = tmp_path / "lone.png"
    img.write_bytes(b"\0" * 100)
    age(tmp_path)
    scanner.scan()
    clock.t += 10  # settled: no longer looked at every scan
    scanner.scan()
    img.write_bytes(b"\1" * 100)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    age(tmp_path)
    clock.t += 50  # the pair timeout has come: looked at once more, it changed, so it waits again
    assert scanner.scan() == [] and scanner.next_ready_in == 60
    clock.t += 60
    [g] = scanner.scan()
    assert g.sigs[img] == signature(img.stat())


def test_a_file_added_deep_down_in_an_unchanged_tree_is_found(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    with nested(tmp_path, 8) as deep:
        (tmp_path / "d" / "old.png").write_bytes(b"x")
        age(*[tmp_path.joinpath(*["d"] * i) for i in range(9)])
        scanner.scan()
        clock.t += 5
        assert scanner.scan() == [] and scanner.waiting == 1
        (deep / "new.png").write_bytes(b"x")
        (deep / "new.txt").write_text("p")
        clock.t += 1
        scanner.scan()
        assert scanner.waiting == 3 and ("d/" * 8 + "new", "arriving") in scanner.pending
        clock.t += 3
        [g] = scanner.scan()
    assert g.rel_dir == Path("/".join(["d"] * 8)) and g.name == "new"
