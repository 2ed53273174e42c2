"""Encoding with real ffmpeg binaries (the pinned one and Debian's), real files, no mocks."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from importlib import metadata
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from helpers import probe
from PIL import Image

from daemon.encode.builtin_recipes import BUILTIN_RECIPES
from daemon.encode.ffmpeg import FFmpeg, FFmpegUnavailable, count_frames, ffmpeg_exe, select_ffmpeg
from daemon.encode.onepass import EncodeResult, encode_job
from daemon.encode.recipes import RecipeConfig
from daemon.encode.validate import validate_recipe
from daemon.errors import EncodeError

ROOT = Path(__file__).resolve().parents[2]
FPS = 8
FRAMES = 16
HEIGHT, WIDTH = 128, 96  # Portrait like most jobs; small so the suite stays quick.
BROKEN = RecipeConfig(description="broken on purpose", filters=["nosuchfilter"])


def make_frames(count: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A bright, moving, smooth picture: fades and palettes see real content, x264 stays fast."""
    y = np.linspace(60, 200, height, dtype=np.float32)[:, None]
    x = np.linspace(60, 200, width, dtype=np.float32)[None, :]
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, :, :, 0] = np.broadcast_to((x + 4 * i) % 256, (height, width))
        frames[i, :, :, 1] = np.broadcast_to(y, (height, width))
        frames[i, :, :, 2] = np.broadcast_to((x + y) / 2, (height, width))
    return frames


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def leftovers(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return make_frames()


@pytest.fixture(scope="module")
def all_builtins(
    tmp_path_factory: pytest.TempPathFactory, clip: np.ndarray, ffmpeg_binary: FFmpeg
) -> tuple[Path, EncodeResult]:
    out_dir = tmp_path_factory.mktemp("job")
    result = encode_job(clip, FPS, out_dir, "job", BUILTIN_RECIPES, ffmpeg=ffmpeg_binary)
    return out_dir, result


def test_the_default_ffmpeg_is_the_pinned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pin = re.search(r'"imageio-ffmpeg==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "imageio-ffmpeg must be pinned to one version in pyproject.toml"
    chosen = select_ffmpeg(None)
    assert (
        chosen.chosen_by
        == f"imageio-ffmpeg {pin.group(1)}"
        == f"imageio-ffmpeg {metadata.version('imageio-ffmpeg')}"
    )
    assert (
        Path(chosen.path).is_file()
        and Path(chosen.path).parent.parent == Path(imageio_ffmpeg.__file__).parent
    )
    assert chosen.path != shutil.which("ffmpeg")  # Never whatever is on PATH.
    assert ffmpeg_exe() == chosen.path and select_ffmpeg(None) is chosen  # Checked once, then cached.
    assert chosen.version and chosen.path in chosen.describe() and chosen.version in chosen.describe()
    # imageio-ffmpeg's own lookup obeys this variable; the pinned choice does not.
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/usr/bin/false")
    assert select_ffmpeg.__wrapped__(None) == chosen


def test_a_configured_ffmpeg_that_cannot_work_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(FFmpegUnavailable, match=r"output\.ffmpeg = '/nowhere/ffmpeg' is not an executable"):
        select_ffmpeg(Path("/nowhere/ffmpeg"))
    impostor = tmp_path / "ffmpeg"
    impostor.write_text("#!/bin/sh\necho 'not an ffmpeg'\n")
    impostor.chmod(0o755)
    with pytest.raises(FFmpegUnavailable, match=r"is not a working ffmpeg; set output\.ffmpeg"):
        select_ffmpeg(impostor)


def test_count_frames_reads_back_what_was_written(
    tmp_path: Path, all_builtins: tuple[Path, EncodeResult], ffmpeg_binary: FFmpeg
) -> None:
    out_dir, result = all_builtins
    exe = ffmpeg_binary.path
    assert count_frames(result.master, exe) == (FRAMES, None)
    assert count_frames(out_dir / "job.poster.png", exe) == (1, None)
    assert count_frames(out_dir / "job.gif", exe) == (FRAMES, None)
    truncated = tmp_path / "truncated.mp4"
    data = result.master.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # faststart: the index survives, half the frames do not
    frames, problem = count_frames(truncated, exe)
    assert frames is None or frames < FRAMES, problem
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert count_frames(tmp_path / "empty.mp4", exe)[1] is not None
    sound = tmp_path / "sound.mp4"  # A valid file with no video in it, like 5.1's empty output.
    subprocess.run(
        [exe, "-v", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "0.2", "-c:a", "aac", str(sound)],
        check=True,
    )
    assert count_frames(sound, exe) == (None, "it holds no video (ffmpeg wrote an empty file)")


def test_an_output_that_got_no_frames_is_failed_whatever_ffmpeg_exits(
    tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg
) -> None:
    # Debian's 5.1 exits 0 and leaves a 262-byte mp4 for "late"; the pinned build exits 1.
    late = RecipeConfig(codec="libx264", filters=["select=gte(n\\,6)"])
    recipes = {"poster": BUILTIN_RECIPES["poster"], "late": late}
    result = encode_job(clip[:4], FPS, tmp_path, "job", recipes, ffmpeg=ffmpeg_binary)
    assert result.failed == ["late"]
    assert result.recipes["late"].path is None and result.recipes["late"].error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.mp4", "job.poster.png"]
    assert probe(result.master)["frames"] == 4


def test_a_master_with_no_frames_fails_the_job_and_leaves_nothing(
    tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg
) -> None:
    recipes = {"poster": BUILTIN_RECIPES["poster"]}
    with pytest.raises(EncodeError, match="The video file could not be written"):
        encode_job(clip, FPS, tmp_path, "job", recipes, master_options={"t": "0"}, ffmpeg=ffmpeg_binary)
    assert list(tmp_path.iterdir()) == []


def test_all_builtins_in_one_pass(all_builtins: tuple[Path, EncodeResult]) -> None:
    out_dir, result = all_builtins
    assert result.single_pass
    assert all(outcome.ok and outcome.error is None for outcome in result.recipes.values())
    assert list(result.recipes) == list(BUILTIN_RECIPES)
    expected = {"job.mp4"} | {recipe.file_name("job", name) for name, recipe in BUILTIN_RECIPES.items()}
    assert "job.gif" in expected  # Not job.gif.gif: the recipe name is its extension.
    assert {p.name for p in out_dir.iterdir()} == expected
    assert result.command.count("-i") == 1
    assert result.command[result.command.index("-i") + 1] == "pipe:"
    graph = result.command[result.command.index("-filter_complex") + 1]
    assert graph.startswith(f"[0]split={len(BUILTIN_RECIPES) + 1}")
    assert all(not arg.startswith("-") or arg[1:2].isalpha() for arg in result.command)
    assert result.seconds > 0


def test_master_clip(all_builtins: tuple[Path, EncodeResult], clip: np.ndarray) -> None:
    out_dir, result = all_builtins
    assert result.master == out_dir / "job.mp4"
    info = probe(result.master)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (WIDTH, HEIGHT)
    assert info["frames"] == FRAMES
    assert info["fps"] == FPS
    assert info["duration"] == pytest.approx(FRAMES / FPS)
    first = decode(result.master)[0].astype(int)
    assert np.abs(first - clip[0]).mean() < 4


def test_master_is_faststart(all_builtins: tuple[Path, EncodeResult]) -> None:
    boxes = top_level_boxes(all_builtins[1].master)
    assert "moov" in boxes
    assert "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_vertical_is_1080x1920_padded_centred(all_builtins: tuple[Path, EncodeResult]) -> None:
    path = all_builtins[1].recipes["vertical"].path
    assert path is not None
    info = probe(path)
    assert (info["codec"], info["pix_fmt"], info["width"], info["height"]) == ("h264", "yuv420p", 1080, 1920)
    assert info["frames"] == FRAMES
    # 96x128 fits as 1080x1440: black bands of 240 rows above and below, picture in between.
    rows = decode(path)[0].mean(axis=(1, 2))
    lit = np.flatnonzero(rows > 30)
    top, bottom = lit[0], 1920 - 1 - lit[-1]
    assert top == pytest.approx(240, abs=4)
    assert bottom == pytest.approx(top, abs=2)
    assert top_level_boxes(path).index("moov") < top_level_boxes(path).index("mdat")


def test_h264_keeps_the_size(all_builtins: tuple[Path, EncodeResult]) -> None:
    path = all_builtins[1].recipes["h264"].path
    assert path is not None
    info = probe(path)
    assert (info["codec"], info["pix_fmt"], info["width"], info["height"]) == (
        "h264",
        "yuv420p",
        WIDTH,
        HEIGHT,
    )
    assert info["frames"] == FRAMES
    assert info["fps"] == FPS


def test_fps30_keeps_the_duration(all_builtins: tuple[Path, EncodeResult]) -> None:
    path = all_builtins[1].recipes["fps30"].path
    assert path is not None
    info = probe(path)
    assert info["fps"] == 30
    assert info["codec"] == "h264"
    assert abs(info["frames"] / 30 - FRAMES / FPS) <= 1 / 30
    assert abs(info["duration"] - FRAMES / FPS) <= 1 / 30


def test_poster_is_the_first_frame(all_builtins: tuple[Path, EncodeResult], clip: np.ndarray) -> None:
    path = all_builtins[1].recipes["poster"].path
    assert path is not None
    assert path.name == "job.poster.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(pixels - clip[0]).max() <= 2
    assert np.abs(pixels - clip[-1]).max() > 10  # Really the first frame, not any frame.


def test_fade_starts_and_ends_dark(all_builtins: tuple[Path, EncodeResult], clip: np.ndarray) -> None:
    path = all_builtins[1].recipes["fade"].path
    assert path is not None
    frames = decode(path)
    assert len(frames) == FRAMES
    assert clip[0].mean() > 100
    assert frames[0].mean() < 8
    assert frames[-1].mean() < 8
    middle = FRAMES // 2
    assert abs(frames[middle].mean() - clip[middle].mean()) < 4


def test_gif_loops_forever_and_is_small(all_builtins: tuple[Path, EncodeResult]) -> None:
    path = all_builtins[1].recipes["gif"].path
    assert path is not None
    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.info["loop"] == 0
        assert image.n_frames == FRAMES
        assert max(image.size) <= 320
        assert image.size[0] / image.size[1] == pytest.approx(WIDTH / HEIGHT, abs=0.02)
    assert path.stat().st_size < 500_000


def test_large_clip_gif_is_limited_to_320(tmp_path: Path, ffmpeg_binary: FFmpeg) -> None:
    frames = make_frames(count=4, height=704, width=512)
    result = encode_job(frames, FPS, tmp_path, "big", {"gif": BUILTIN_RECIPES["gif"]}, ffmpeg=ffmpeg_binary)
    path = result.recipes["gif"].path
    assert path is not None
    with Image.open(path) as image:
        assert image.size == (233, 320)


def test_no_temp_files_after_success(all_builtins: tuple[Path, EncodeResult]) -> None:
    assert leftovers(all_builtins[0]) == []


def test_validate_builtins(ffmpeg_binary: FFmpeg) -> None:
    for name, recipe in BUILTIN_RECIPES.items():
        assert validate_recipe(name, recipe, ffmpeg=ffmpeg_binary) is None, name


def test_validate_reports_ffmpegs_message(ffmpeg_binary: FFmpeg) -> None:
    message = validate_recipe("broken", BROKEN, ffmpeg=ffmpeg_binary)
    assert message is not None
    assert "nosuchfilter" in message
    bad_option = validate_recipe(
        "crf", RecipeConfig(codec="libx264", options={"crf": "abc"}), ffmpeg=ffmpeg_binary
    )
    assert bad_option is not None
    assert "crf" in bad_option
    assert ".i2vd-" not in bad_option  # Temp names are replaced by the names users see.


def test_validate_refuses_empty_output(ffmpeg_binary: FFmpeg) -> None:
    assert (
        validate_recipe("nothing", RecipeConfig(codec="libx264", filters=["select=0"]), ffmpeg=ffmpeg_binary)
        is not None
    )


def test_broken_recipe_fails_alone(tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg) -> None:
    recipes = {"poster": BUILTIN_RECIPES["poster"], "broken": BROKEN, "h264": BUILTIN_RECIPES["h264"]}
    result = encode_job(clip, FPS, tmp_path, "job", recipes, ffmpeg=ffmpeg_binary)
    assert not result.single_pass
    assert result.failed == ["broken"]
    broken = result.recipes["broken"]
    assert not broken.ok
    assert broken.path is None
    assert broken.error is not None
    assert "nosuchfilter" in broken.error
    assert probe(result.master)["frames"] == FRAMES
    assert probe(tmp_path / "job.h264.mp4")["frames"] == FRAMES
    assert (tmp_path / "job.poster.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.h264.mp4", "job.mp4", "job.poster.png"]
    assert result.to_dict()["recipes"]["broken"]["ok"] is False


def test_master_failure_raises_and_leaves_nothing(
    tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg
) -> None:
    with pytest.raises(EncodeError, match="crf"):
        encode_job(
            clip,
            FPS,
            tmp_path,
            "job",
            {"poster": BUILTIN_RECIPES["poster"]},
            master_options={"crf": "abc"},
            ffmpeg=ffmpeg_binary,
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_replaced_whole(tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg) -> None:
    (tmp_path / "job.mp4").write_bytes(b"old")
    encode_job(clip, FPS, tmp_path, "job", {}, ffmpeg=ffmpeg_binary)
    assert probe(tmp_path / "job.mp4")["frames"] == FRAMES


def test_hostile_stem_and_folder(tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg) -> None:
    # The job folder is named after the user's file too; '%d' must not become an image2 pattern.
    out_dir = tmp_path / "-i 50% %d ünï"
    out_dir.mkdir()
    stem = "-y 50% ünïcode ✓ %d [x]"
    recipes = {"poster": BUILTIN_RECIPES["poster"], "gif": BUILTIN_RECIPES["gif"]}
    result = encode_job(clip[:4], FPS, out_dir, stem, recipes, ffmpeg=ffmpeg_binary)
    assert result.single_pass
    assert result.master == out_dir / f"{stem}.mp4"
    assert probe(result.master)["frames"] == 4
    assert (out_dir / f"{stem}.poster.png").is_file()
    expected = [f"{stem}.gif", f"{stem}.mp4", f"{stem}.poster.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == expected


def test_relative_out_dir_gives_absolute_paths(
    tmp_path: Path, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch, ffmpeg_binary: FFmpeg
) -> None:
    (tmp_path / "-out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = encode_job(clip[:2], FPS, Path("-out"), "job", {}, ffmpeg=ffmpeg_binary)
    assert result.master.is_absolute()
    assert result.master == tmp_path / "-out" / "job.mp4"
    assert result.master.is_file()


@pytest.mark.parametrize(("height", "width"), [(50, 66), (49, 65), (3, 3)])
def test_odd_and_tiny_sizes(tmp_path: Path, height: int, width: int, ffmpeg_binary: FFmpeg) -> None:
    frames = make_frames(count=4, height=height, width=width)
    result = encode_job(frames, FPS, tmp_path, "odd", BUILTIN_RECIPES, ffmpeg=ffmpeg_binary)
    assert result.failed == []
    even = (width - width % 2, height - height % 2)
    master = probe(result.master)
    assert (master["width"], master["height"]) == even
    assert master["frames"] == 4
    assert (probe(tmp_path / "odd.h264.mp4")["width"], probe(tmp_path / "odd.h264.mp4")["height"]) == even
    with Image.open(tmp_path / "odd.poster.png") as image:
        assert image.size == even
    assert probe(tmp_path / "odd.vertical.mp4")["height"] == 1920


def test_recipe_that_makes_odd_sizes_still_encodes(
    tmp_path: Path, clip: np.ndarray, ffmpeg_binary: FFmpeg
) -> None:
    recipe = RecipeConfig(codec="libx264", filters=["scale=41:-1"], options={"crf": 30})
    assert validate_recipe("odd", recipe, ffmpeg=ffmpeg_binary) is None
    result = encode_job(clip[:4], FPS, tmp_path, "job", {"odd": recipe}, ffmpeg=ffmpeg_binary)
    info = probe(tmp_path / "job.odd.mp4")
    assert result.recipes["odd"].ok
    assert (info["width"] % 2, info["height"] % 2, info["pix_fmt"]) == (0, 0, "yuv420p")


def test_bad_input_is_refused(tmp_path: Path, clip: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_job(clip.astype(np.float32), FPS, tmp_path, "job", {})
    with pytest.raises(ValueError):
        encode_job(clip[..., :2], FPS, tmp_path, "job", {})
    with pytest.raises(ValueError):
        encode_job(clip, 0, tmp_path, "job", {})
    with pytest.raises(ValueError):
        encode_job(clip, FPS, tmp_path, "../job", {})
    assert list(tmp_path.iterdir()) == []


def test_non_contiguous_frames(tmp_path: Path, ffmpeg_binary: FFmpeg) -> None:
    frames = make_frames(count=4, height=64, width=96)[:, :, ::2]  # A strided view.
    result = encode_job(
        frames, FPS, tmp_path, "job", {"poster": BUILTIN_RECIPES["poster"]}, ffmpeg=ffmpeg_binary
    )
    with Image.open(tmp_path / "job.poster.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(pixels - frames[0]).max() <= 2
    assert probe(result.master)["width"] == 48
