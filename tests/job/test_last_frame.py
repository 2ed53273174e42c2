"""First and last frame: ``NAME.last.EXT`` beside ``NAME.EXT`` asks for a clip that ends on it.

Pairing on a real inbox folder (injected clock, the shipped settle time), the families that can
and cannot take a last frame (tiny builds, real diffusers pipelines), and end to end: the real
``i2vd`` command with the shipped ``[watch]`` defaults.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import helpers
import numpy as np
import pytest
from helpers import Clock, digest, png_bytes
from PIL import Image

from daemon.config_sections import DEFAULT_IGNORE
from daemon.engine.detect import detect_family
from daemon.engine.families import FAMILIES, end_frame_families
from daemon.engine.generator import load_generator
from daemon.engine.runner import DiffusersGenerator
from daemon.engine.tiny.registry import folder_name
from daemon.errors import GenerationError
from daemon.folders import names
from daemon.folders.scan import InboxScanner

CLI = [sys.executable, "-m", "daemon.cli"]
SHIPPED = helpers.SHIPPED_WATCH


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scanner(tmp_path: Path, clock: Clock) -> InboxScanner:
    return InboxScanner(
        tmp_path,
        ignore=DEFAULT_IGNORE,
        settle_seconds=float(SHIPPED["settle_seconds"]),  # type: ignore[arg-type]
        pair_timeout=float(SHIPPED["pair_timeout"]),  # type: ignore[arg-type]
        clock=clock,
    )


def _settle(scanner: InboxScanner, clock: Clock) -> list:  # type: ignore[type-arg]
    scanner.scan()
    clock.t += float(SHIPPED["settle_seconds"]) + 0.5  # type: ignore[arg-type]
    return scanner.scan()


# -- names ----------------------------------------------------------------------------------------


def test_names_tell_a_last_frame_from_an_image_of_its_own() -> None:
    assert names.last_frame_of("cat.last") == "cat"
    assert names.last_frame_of("my.cat.last") == "my.cat"
    assert names.last_frame_of(".last") is None and names.last_frame_of("cat") is None
    assert names.lends_last_frame(["cat.jpg"], ["cat.last.png"])
    assert names.lends_last_frame(["cat.txt"], ["cat.last.png"]), "a job waiting for its image"
    assert not names.lends_last_frame(["cat.xmp"], ["cat.last.png"]), "companions alone are no job"
    assert not names.lends_last_frame(["cat.jpg"], ["cat.last.png", "cat.last.txt"]), "a job of its own"
    assert names.split_last_frames("cat", ["cat.txt", "cat.last.webp", "cat.jpg", "cat.last.txt"]) == (
        ["cat.last.webp"],
        ["cat.jpg", "cat.last.txt", "cat.txt"],
    )


# -- pairing --------------------------------------------------------------------------------------


def test_a_last_frame_goes_with_its_job_and_is_no_job_or_clash_of_its_own(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    for name in ("cat.jpg", "cat.last.jpg", "cat.txt"):
        (tmp_path / name).write_bytes(b"x")
    [group] = _settle(scanner, clock)
    assert group.name == "cat"
    assert [p.name for p in group.images] == ["cat.jpg"] and [p.name for p in group.lasts] == ["cat.last.jpg"]
    assert sorted(p.name for p in group.files) == ["cat.jpg", "cat.last.jpg", "cat.txt"]
    assert set(group.sigs) == set(group.files), "the claim checks the last frame is unchanged too"


def test_the_job_waits_until_its_last_frame_has_settled(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "cat.jpg").write_bytes(b"x")
    (tmp_path / "cat.txt").write_text("a cat turns")
    scanner.scan()
    clock.t += 2
    (tmp_path / "cat.last.jpg").write_bytes(b"x" * 10)  # still arriving when the pair has almost settled
    assert scanner.scan() == []
    clock.t += 2
    with open(tmp_path / "cat.last.jpg", "ab") as f:
        f.write(b"y" * 10)
    assert scanner.scan() == [], "a growing last frame holds the job back"
    clock.t += 3.5
    [group] = scanner.scan()
    assert [p.name for p in group.lasts] == ["cat.last.jpg"]


def test_a_last_frame_that_came_first_joins_its_job_when_the_image_comes(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "cat.last.png").write_bytes(b"x")
    assert _settle(scanner, clock) == [] and scanner.pending == [("cat.last", "waiting for its prompt file")]
    (tmp_path / "cat.png").write_bytes(b"x")
    (tmp_path / "cat.txt").write_text("a cat turns")
    [group] = _settle(scanner, clock)
    assert group.name == "cat" and [p.name for p in group.lasts] == ["cat.last.png"]
    assert scanner.pending == [] and scanner.waiting == 0


def test_an_image_merely_named_last_is_an_ordinary_job(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    # No "the" job beside it: "the.last.png" with its own prompt file is a job like any other.
    (tmp_path / "the.last.png").write_bytes(b"x")
    (tmp_path / "the.last.txt").write_text("the last light fades")
    # With its own prompt file it stays a job of its own even beside a job of that name.
    (tmp_path / "dog.png").write_bytes(b"x")
    (tmp_path / "dog.txt").write_text("a dog runs")
    (tmp_path / "dog.last.png").write_bytes(b"x")
    (tmp_path / "dog.last.txt").write_text("a dog sleeps")
    groups = sorted(_settle(scanner, clock), key=lambda g: g.name)
    assert [(g.name, [p.name for p in g.files]) for g in groups] == [
        ("dog", ["dog.png", "dog.txt"]),
        ("dog.last", ["dog.last.png", "dog.last.txt"]),
        ("the.last", ["the.last.png", "the.last.txt"]),
    ]


def test_a_last_frame_left_alone_waits_like_any_image(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    for name in ("cat.png", "cat.last.png"):
        (tmp_path / name).write_bytes(b"x")
    scanner.scan()
    (tmp_path / "cat.png").unlink()  # the person took the image back out
    clock.t += 4
    assert scanner.scan() == []
    assert scanner.pending == [("cat.last", "waiting for its prompt file")]


def test_a_prompt_file_may_name_its_last_frame_and_the_job_waits_for_it(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "cat.png").write_bytes(b"x")
    (tmp_path / "cat.toml").write_text('prompt = "a cat turns"\nlast_image = "sunset.jpg"\n')
    assert _settle(scanner, clock) == []
    assert scanner.pending == [("cat", "waiting for its last image")]
    (tmp_path / "sunset.jpg").write_bytes(b"x")
    [group] = _settle(scanner, clock)
    assert group.name == "cat" and [p.name for p in group.lasts] == ["sunset.jpg"]
    assert scanner.pending == [], "the named image is no job of its own"


def test_a_last_image_that_never_comes_fails_after_the_pair_timeout(
    tmp_path: Path, scanner: InboxScanner, clock: Clock
) -> None:
    (tmp_path / "cat.png").write_bytes(b"x")
    (tmp_path / "cat.json").write_text('{"prompt": "a cat turns", "last_image": "../../etc/secret.png"}')
    (tmp_path / "dog.png").write_bytes(b"x")
    (tmp_path / "dog.json").write_text('{"prompt": "a dog runs", "last_image": "later.png"}')
    [group] = _settle(scanner, clock)  # a path is never looked up: the job goes on to fail, naming it
    assert group.name == "cat" and group.lasts == []
    clock.t += float(SHIPPED["pair_timeout"])  # type: ignore[arg-type]
    ready = {g.name: g for g in scanner.scan()}  # cat is still ready: nothing claimed it here
    assert sorted(ready) == ["cat", "dog"] and ready["dog"].lasts == [], "taken to fail, saying so"


# -- families ---------------------------------------------------------------------------------------


def test_the_families_that_take_a_last_frame_are_listed_from_the_table() -> None:
    takes = [f.label for f in FAMILIES.values() if f.end_frame is not None]
    assert end_frame_families() == takes and "Wan 2.1 FLF2V" in takes and "I2VGen-XL" not in takes
    flf2v = FAMILIES["wan_flf2v"]
    assert (flf2v.default_steps, flf2v.default_guidance, flf2v.typical_frames) == (50, 5.5, 81)


def test_wan_flf2v_is_detected_from_its_transformer(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    assert detect_family(str(tmp_path)) == "wan"
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"pos_embed_seq_len": 514}))
    assert detect_family(str(tmp_path)) == "wan_flf2v"


def _noise(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(seed=seed, size=size))).convert("RGB")


@pytest.fixture(scope="module")
def wans(tiny_families_dir: Path) -> dict[str, DiffusersGenerator]:
    gens = {}
    for model_id in ("tiny-wan-flf2v", "tiny-wan22", "tiny-wan"):
        gen = load_generator(model_id, revision=None, device="cpu", dtype="auto", cache_dir=tiny_families_dir)
        assert isinstance(gen, DiffusersGenerator)
        gens[model_id] = gen
    return gens


def test_wan_clips_end_on_the_last_frame_given(
    wans: dict[str, DiffusersGenerator], tiny_families_dir: Path
) -> None:
    flf2v_folder = tiny_families_dir / folder_name("tiny-wan-flf2v")
    first = _noise(1, (32, 16))
    last = _noise(2, (80, 40))  # another size: cropped and resized to the clip as the first is
    req = helpers.request(width=32, height=16, image=first, num_frames=5, guidance_scale=3.0)
    flf2v = wans["tiny-wan-flf2v"]
    assert flf2v.family.name == "wan_flf2v"
    assert detect_family(str(flf2v_folder)) == "wan_flf2v", "detected from the build's transformer config"
    a = flf2v.generate(replace(req, last_image=last)).frames
    b = flf2v.generate(replace(req, last_image=last.rotate(180))).frames
    assert a.shape == (5, 16, 32, 3) and not np.array_equal(a, b), "the last frame changes the clip"
    with pytest.raises(GenerationError, match=r"NAME\.last\.jpg"):
        flf2v.generate(req)  # FLF2V makes clips between two frames only
    a14b = wans["tiny-wan22"]
    with_last = a14b.generate(replace(req, last_image=last)).frames
    assert not np.array_equal(with_last, a14b.generate(req).frames)
    with pytest.raises(GenerationError, match=r"LTX-Video, Wan 2\.1 FLF2V, Wan 2\.2 A14B") as e:
        wans["tiny-wan"].generate(replace(req, last_image=last))
    assert "Wan 2.1, cannot take one" in str(e.value)


def test_ltx_video_ends_on_the_last_frame_through_its_condition_pipeline(tiny_families_dir: Path) -> None:
    gen = load_generator("tiny-ltx", revision=None, device="cpu", dtype="auto", cache_dir=tiny_families_dir)
    assert isinstance(gen, DiffusersGenerator)
    req = helpers.request(width=64, height=32, image=_noise(1, (64, 32)), num_frames=9, guidance_scale=3.0)
    last = _noise(2, (64, 32))
    a = gen.generate(replace(req, last_image=last)).frames
    b = gen.generate(replace(req, last_image=last.rotate(180))).frames
    assert a.shape == (9, 32, 64, 3) and not np.array_equal(a, b), "the last frame changes the clip"
    assert np.array_equal(gen.generate(replace(req, last_image=last)).frames, a), "and is seeded"
    plain = gen.generate(req).frames  # without one: the image-to-video pipeline as before
    assert plain.shape == a.shape and not np.array_equal(plain, a)


# -- end to end, with the shipped [watch] defaults ------------------------------------------------------


def _env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return {**base, "HF_HUB_OFFLINE": "1"}


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(config)], env=_env(), capture_output=True, text=True, timeout=600
    )


def _jpeg(path: Path, seed: int, size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(seed, size).save(path, format="JPEG", quality=90)
    return digest(path)


# Short clips keep a CPU run short: 5 frames (Wan's 4k+1), 2 steps.
FLF2V = {"num_frames": 5, "steps": 2, "fps": 8}


@pytest.mark.slow
def test_a_first_and_last_frame_clip_end_to_end(tmp_path: Path) -> None:
    config = helpers.write_config(tmp_path, "tiny-wan-flf2v", FLF2V)
    inbox = tmp_path / "inbox"
    before = {
        "boat.jpg": _jpeg(inbox / "boat.jpg", 1, (96, 64)),
        "boat.last.jpg": _jpeg(inbox / "boat.last.jpg", 2, (120, 90)),  # another shape: cropped to the clip
    }
    (inbox / "boat.txt").write_text("a paper boat drifts to the far shore")
    before["boat.txt"] = digest(inbox / "boat.txt")
    r = _run(config, "run", "--once")
    assert r.returncode == 0, r.stderr[-3000:]
    [out] = (tmp_path / "outputs").glob("boat_*/")
    record = json.loads((out / f"{out.name}.json").read_text())
    assert record["inputs"] == {"image": "boat.jpg", "sidecar": "boat.txt", "last_image": "boat.last.jpg"}
    assert record["generation"]["family"] == "wan_flf2v"
    with av.open(str(out / f"{out.name}.mp4")) as clip:
        frames = list(clip.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (768, 512)
    [done] = (tmp_path / "done").glob("boat_*/")
    assert {p.name: digest(p) for p in done.iterdir()} == before
    assert os.listdir(inbox) == [] and not list((tmp_path / "failed").glob("*/"))


@pytest.mark.slow
def test_a_model_without_end_frames_fails_naming_those_with_and_the_retry_works(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    photo, end = tmp_path / "mine" / "cup.png", tmp_path / "mine" / "cup-end.png"
    photo.parent.mkdir()
    photo.write_bytes(png_bytes(seed=4, size=(96, 64)))
    end.write_bytes(png_bytes(seed=5, size=(96, 64)))
    # The shipped model (tiny I2VGen-XL) cannot end on a chosen frame.
    config = helpers.write_config(tmp_path, "tiny", {"num_frames": 4, "steps": 2, "fps": 8})
    placed = _run(config, "submit", str(photo), "--prompt", "steam rises", "--last", str(end))
    assert placed.returncode == 0, placed.stderr
    assert sorted(os.listdir(inbox)) == ["cup.json", "cup.last.png", "cup.png"]
    r = _run(config, "run", "--once")
    assert r.returncode == 1, r.stderr[-3000:]
    [failed] = (tmp_path / "failed").glob("cup_*/")
    error = (failed / "error.txt").read_text()
    assert "I2VGen-XL, cannot take one" in error and ", ".join(end_frame_families()) in error
    assert digest(failed / "cup.png") == digest(photo) and digest(failed / "cup.last.png") == digest(end)
    assert not list((tmp_path / "outputs").glob("*/"))

    # The operator switches to a model that can; the person drags the folder back.
    config = helpers.write_config(tmp_path, "tiny-wan-flf2v", FLF2V)
    os.rename(failed, inbox / failed.name)
    r = _run(config, "run", "--once")
    assert r.returncode == 0, r.stderr[-3000:]
    [out] = (tmp_path / "outputs").glob("cup_*/")
    assert json.loads((out / f"{out.name}.json").read_text())["inputs"]["last_image"] == "cup.last.png"
    [done] = (tmp_path / "done").glob("cup_*/")
    assert sorted(os.listdir(done)) == ["cup.json", "cup.last.png", "cup.png"]
    assert digest(done / "cup.last.png") == digest(end)
    assert os.listdir(inbox) == []


@pytest.mark.slow
def test_a_prompt_file_names_its_last_frame_end_to_end(tmp_path: Path) -> None:
    config = helpers.write_config(tmp_path, "tiny-wan-flf2v", FLF2V)
    inbox = tmp_path / "inbox"
    before = {
        "dog.jpg": _jpeg(inbox / "dog.jpg", 6, (96, 64)),
        "sunset.jpg": _jpeg(inbox / "sunset.jpg", 7, (64, 64)),
    }
    (inbox / "dog.toml").write_text('prompt = "the dog runs into the sunset"\nlast_image = "sunset.jpg"\n')
    before["dog.toml"] = digest(inbox / "dog.toml")
    # A share user's name that points elsewhere is refused, never followed.
    outside = _jpeg(tmp_path / "secret.jpg", 8, (64, 64))
    _jpeg(inbox / "cat.jpg", 9, (96, 64))
    (inbox / "cat.toml").write_text('prompt = "a cat"\nlast_image = "../secret.jpg"\n')
    r = _run(config, "run", "--once")
    assert r.returncode == 1, r.stderr[-3000:]
    [out] = (tmp_path / "outputs").glob("dog_*/")
    assert json.loads((out / f"{out.name}.json").read_text())["inputs"]["last_image"] == "sunset.jpg"
    [done] = (tmp_path / "done").glob("dog_*/")
    assert {p.name: digest(p) for p in done.iterdir()} == before
    [failed] = (tmp_path / "failed").glob("cat_*/")
    error = (failed / "error.txt").read_text()
    assert "last_image" in error and "no folders" in error
    assert sorted(os.listdir(failed)) == sorted(["cat.jpg", "cat.toml", "error.txt", f"{failed.name}.log"])
    assert digest(tmp_path / "secret.jpg") == outside and os.listdir(inbox) == []
