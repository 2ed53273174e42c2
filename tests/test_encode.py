"""Encoding with the real ffmpeg (system or imageio-ffmpeg's), real files, no mocks."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from daemon.encode import EncodeResult, encode_job, ffmpeg_exe, probe, validate_recipe
from daemon.errors import EncodeError
from daemon.recipes import BUILTIN_RECIPES, RecipeConfig

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
def all_builtins(tmp_path_factory: pytest.TempPathFactory, clip: np.ndarray) -> tuple[Path, EncodeResult]:
    out_dir = tmp_path_factory.mktemp("job")
    result = encode_job(clip, FPS, out_dir, "job", BUILTIN_RECIPES)
    return out_dir, result


def test_ffmpeg_exe_is_usable() -> None:
    exe = ffmpeg_exe()
    assert Path(exe).exists()
    assert ffmpeg_exe() is exe  # Cached.


def test_all_builtins_in_one_pass(all_builtins: tuple[Path, EncodeResult]) -> None:
    out_dir, result = all_builtins
    assert result.single_pass
    assert all(outcome.ok and outcome.error is None for outcome in result.recipes.values())
    assert list(result.recipes) == list(BUILTIN_RECIPES)
    expected = {"job.mp4"} | {f"job.{name}.{recipe.ext}" for name, recipe in BUILTIN_RECIPES.items()}
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


def test_large_clip_gif_is_limited_to_320(tmp_path: Path) -> None:
    frames = make_frames(count=4, height=704, width=512)
    result = encode_job(frames, FPS, tmp_path, "big", {"gif": BUILTIN_RECIPES["gif"]})
    path = result.recipes["gif"].path
    assert path is not None
    with Image.open(path) as image:
        assert image.size == (233, 320)


def test_no_temp_files_after_success(all_builtins: tuple[Path, EncodeResult]) -> None:
    assert leftovers(all_builtins[0]) == []


def test_validate_builtins() -> None:
    for name, recipe in BUILTIN_RECIPES.items():
        assert validate_recipe(name, recipe) is None, name


def test_validate_reports_ffmpegs_message() -> None:
    message = validate_recipe("broken", BROKEN)
    assert message is not None
    assert "nosuchfilter" in message
    bad_option = validate_recipe("crf", RecipeConfig(codec="libx264", options={"crf": "abc"}))
    assert bad_option is not None
    assert "crf" in bad_option
    assert ".i2vd-" not in bad_option  # Temp names are replaced by the names users see.


def test_validate_refuses_empty_output() -> None:
    assert validate_recipe("nothing", RecipeConfig(codec="libx264", filters=["select=0"])) is not None


def test_broken_recipe_fails_alone(tmp_path: Path, clip: np.ndarray) -> None:
    recipes = {"poster": BUILTIN_RECIPES["poster"], "broken": BROKEN, "h264": BUILTIN_RECIPES["h264"]}
    result = encode_job(clip, FPS, tmp_path, "job", recipes)
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


def test_master_failure_raises_and_leaves_nothing(tmp_path: Path, clip: np.ndarray) -> None:
    with pytest.raises(EncodeError, match="crf"):
        encode_job(
            clip, FPS, tmp_path, "job", {"poster": BUILTIN_RECIPES["poster"]}, master_options={"crf": "abc"}
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_replaced_whole(tmp_path: Path, clip: np.ndarray) -> None:
    (tmp_path / "job.mp4").write_bytes(b"old")
    encode_job(clip, FPS, tmp_path, "job", {})
    assert probe(tmp_path / "job.mp4")["frames"] == FRAMES


def test_hostile_stem_and_folder(tmp_path: Path, clip: np.ndarray) -> None:
    # The job folder is named after the user's file too; '%d' must not become an image2 pattern.
    out_dir = tmp_path / "-i 50% %d ünï"
    out_dir.mkdir()
    stem = "-y 50% ünïcode ✓ %d [x]"
    recipes = {"poster": BUILTIN_RECIPES["poster"], "gif": BUILTIN_RECIPES["gif"]}
    result = encode_job(clip[:4], FPS, out_dir, stem, recipes)
    assert result.single_pass
    assert result.master == out_dir / f"{stem}.mp4"
    assert probe(result.master)["frames"] == 4
    assert (out_dir / f"{stem}.poster.png").is_file()
    expected = [f"{stem}.gif.gif", f"{stem}.mp4", f"{stem}.poster.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == expected


def test_relative_out_dir_gives_absolute_paths(
    tmp_path: Path, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "-out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = encode_job(clip[:2], FPS, Path("-out"), "job", {})
    assert result.master.is_absolute()
    assert result.master == tmp_path / "-out" / "job.mp4"
    assert result.master.is_file()


@pytest.mark.parametrize(("height", "width"), [(50, 66), (49, 65), (3, 3)])
def test_odd_and_tiny_sizes(tmp_path: Path, height: int, width: int) -> None:
    frames = make_frames(count=4, height=height, width=width)
    result = encode_job(frames, FPS, tmp_path, "odd", BUILTIN_RECIPES)
    assert result.failed == []
    even = (width - width % 2, height - height % 2)
    master = probe(result.master)
    assert (master["width"], master["height"]) == even
    assert master["frames"] == 4
    assert (probe(tmp_path / "odd.h264.mp4")["width"], probe(tmp_path / "odd.h264.mp4")["height"]) == even
    with Image.open(tmp_path / "odd.poster.png") as image:
        assert image.size == even
    assert probe(tmp_path / "odd.vertical.mp4")["height"] == 1920


def test_recipe_that_makes_odd_sizes_still_encodes(tmp_path: Path, clip: np.ndarray) -> None:
    recipe = RecipeConfig(codec="libx264", filters=["scale=41:-1"], options={"crf": 30})
    assert validate_recipe("odd", recipe) is None
    result = encode_job(clip[:4], FPS, tmp_path, "job", {"odd": recipe})
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


def test_non_contiguous_frames(tmp_path: Path) -> None:
    frames = make_frames(count=4, height=64, width=96)[:, :, ::2]  # A strided view.
    result = encode_job(frames, FPS, tmp_path, "job", {"poster": BUILTIN_RECIPES["poster"]})
    with Image.open(tmp_path / "job.poster.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(pixels - frames[0]).max() <= 2
    assert probe(result.master)["width"] == 48
