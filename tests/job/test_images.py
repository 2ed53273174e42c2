"""Image loading, clip sizing and fitting, on real files written with Pillow."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydantic import ValidationError

from daemon.config_sections import IMAGE_FORMATS, LimitsConfig
from daemon.errors import ImageError
from daemon.job.image import IMAGE_EXTS, load_image
from daemon.sizing import MAX_ASPECT, clip_size, fit_to, resolution_to_short_side

BIG = 10**9


def load(
    path: Path,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = BIG,
    formats: tuple[str, ...] = IMAGE_FORMATS,
) -> Image.Image:
    """``load_image`` with the shipped [limits] (the formats of config.example.toml)."""
    return load_image(path, max_pixels=max_pixels, max_bytes=max_bytes, formats=formats)


def test_image_exts_are_lower_case_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_EXTS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTS)
    assert ".txt" not in IMAGE_EXTS and ".json" not in IMAGE_EXTS


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp")])
def test_rgb_formats_load(tmp_path: Path, fmt: str, ext: str) -> None:
    p = tmp_path / f"a.{ext}"
    Image.new("RGB", (40, 30), (200, 30, 60)).save(p, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    im = load(p)
    assert im.mode == "RGB" and im.size == (40, 30)
    r, g, b = im.getpixel((20, 15))
    assert abs(r - 200) <= 4 and abs(g - 30) <= 4 and abs(b - 60) <= 4


def test_grayscale(tmp_path: Path) -> None:
    p = tmp_path / "g.png"
    Image.new("L", (10, 8), 77).save(p)
    im = load(p)
    assert im.mode == "RGB" and im.size == (10, 8)
    assert im.getpixel((3, 3)) == (77, 77, 77)


def test_one_bit(tmp_path: Path) -> None:
    p = tmp_path / "b.png"
    img = Image.new("1", (8, 8), 0)
    img.putpixel((1, 1), 1)
    img.save(p)
    im = load(p)
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (0, 0, 0)


def test_la_composited_over_white(tmp_path: Path) -> None:
    p = tmp_path / "la.png"
    img = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    img.putpixel((0, 0), (0, 255))  # black, opaque
    img.putpixel((1, 0), (0, 128))  # black, half transparent
    img.save(p)
    im = load(p)
    assert im.mode == "RGB"
    assert im.getpixel((3, 3)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == (0, 0, 0)
    assert all(120 <= c <= 135 for c in im.getpixel((1, 0)))


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # red, fully transparent
    img.putpixel((0, 0), (0, 0, 255, 255))
    img.save(p)
    im = load(p)
    assert im.mode == "RGB"
    assert im.getpixel((2, 2)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    p = tmp_path / "p.png"
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0  # index 0 is transparent
    img.save(p, transparency=0)
    assert Image.open(p).mode == "P"
    im = load(p)
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 1)) == (200, 100, 50)


def test_palette_without_transparency(tmp_path: Path) -> None:
    p = tmp_path / "p.gif"
    img = Image.new("P", (4, 4), 1)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    img.save(p)
    assert load(p).getpixel((2, 2)) == (200, 100, 50)


def test_cmyk(tmp_path: Path) -> None:
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=100)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    im = load(p)
    assert im.mode == "RGB"
    r, g, b = im.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_cmyk_tiff(tmp_path: Path) -> None:
    p = tmp_path / "c.tif"
    Image.new("CMYK", (6, 6), (0, 0, 0, 255)).save(p)  # black ink only
    assert load(p).getpixel((1, 1)) == (0, 0, 0)


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "deep.png"
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    im = load(p)
    assert im.mode == "RGB"
    assert [im.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_16bit_png_written_by_hand(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG assembled byte by byte (not via Pillow's writer)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"\x00" + struct.pack(">HH", 65535, 1000)  # one row: filter 0, two 16-bit samples
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    p = tmp_path / "hand.png"
    p.write_bytes(png)
    im = load(p)
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (4, 4, 4)  # 1000 / 257 = 3.9 -> 4, clipping would give 255


def test_16bit_tiff_mode_i16(tmp_path: Path) -> None:
    p = tmp_path / "deep.tif"
    Image.fromarray(np.array([[65535, 32768]], dtype=np.uint16)).save(p)
    im = load(p)
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((1, 0)) == (128, 128, 128)


def test_float_tiff_0_to_1(tmp_path: Path) -> None:
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(p)
    im = load(p)
    assert [im.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_6_is_made_upright(tmp_path: Path) -> None:
    # Stored landscape 40x20 with a red left half; orientation 6 means "rotate 90 degrees clockwise
    # to view", so the upright image is portrait 20x40 with red on top.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    img.save(p, quality=95, exif=exif)
    im = load(p)
    assert im.size == (20, 40)
    r, _, b = im.getpixel((10, 5))
    assert r > 200 and b < 60
    r, _, b = im.getpixel((10, 35))
    assert b > 200 and r < 60


def test_broken_exif_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "badexif.jpg"
    Image.new("RGB", (12, 10), (0, 255, 0)).save(p, exif=b"Exif\x00\x00garbage-not-tiff")
    im = load(p)
    assert im.size == (12, 10) and im.getpixel((5, 5))[1] > 200


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 3
    im = load(p)
    assert im.mode == "RGB" and im.getpixel((5, 5)) == (255, 0, 0)


def test_animated_webp_uses_first_frame(tmp_path: Path) -> None:
    p = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (10, 10), c) for c in ((0, 0, 255), (255, 255, 0))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert load(p).getpixel((5, 5)) == (0, 0, 255)


def _noise(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_files_fail(tmp_path: Path, fmt: str, ext: str) -> None:
    whole = tmp_path / f"whole.{ext}"
    _noise(200, 200).save(whole, fmt)
    data = whole.read_bytes()
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: len(data) // 2])
    assert load(whole).size == (200, 200)  # the complete file is fine
    with pytest.raises(ImageError, match="incomplete") as e:
        load(p)
    assert "cut." + ext in str(e.value) and "Copy it again" in str(e.value)


def test_text_file_named_png(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError) as e:
        load(p)
    msg = str(e.value)
    assert "notes.png" in msg and "not an image" in msg and "JPEG, PNG, WebP" in msg


def test_jpeg_named_png_is_fine(tmp_path: Path) -> None:
    p = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(p, "JPEG")
    assert load(p).size == (8, 8)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load(p)


def test_eps_is_refused_without_running_ghostscript(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    # Not even when a caller lists it (the config refuses to: see test_image_formats_config_refuses_eps).
    for formats in (IMAGE_FORMATS, (*IMAGE_FORMATS, "EPS")):
        with pytest.raises(
            ImageError, match=r"is in the EPS \(Encapsulated Postscript\) format, which is not"
        ):
            load(p, formats=formats)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header claiming huge dimensions, with a tiny IDAT: a few hundred bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "side, shown",
    [
        (8_000, "8,000 x 8,000 = 64,000,000 pixels"),  # above the configured limit, below Pillow's own
        (50_000, "2,500,000,000 pixels"),  # above Pillow's hard limit too
    ],
)
def test_decompression_bomb_refused_from_header(tmp_path: Path, side: int, shown: str) -> None:
    # The file holds almost no pixel data: had it been decoded, it would fail as truncated instead.
    p = tmp_path / "bomb.png"
    p.write_bytes(_bomb_png(side, side))
    assert p.stat().st_size < 1000
    with pytest.raises(ImageError) as e:
        load(p, max_pixels=40_000_000)
    msg = str(e.value)
    assert shown in msg and "at most 40,000,000 pixels" in msg and "limits.max_image_pixels" in msg
    assert "incomplete" not in msg


def test_pixel_limit_is_the_configured_one_not_pillows(tmp_path: Path) -> None:
    p = tmp_path / "medium.png"
    Image.new("RGB", (100, 100)).save(p)
    with pytest.raises(ImageError, match="10,000 pixels"):
        load(p, max_pixels=9_999)
    assert load(p, max_pixels=10_000).size == (100, 100)


def test_bomb_far_above_pillow_limit(tmp_path: Path) -> None:
    p = tmp_path / "huge.png"
    p.write_bytes(_bomb_png(2**31 - 1, 2**31 - 1))
    with pytest.raises(ImageError, match=r"has 4,611,686,014,132,420,609 pixels; at most 1,000 pixels"):
        load(p, max_pixels=1000)


def test_file_over_max_bytes(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    _noise(64, 64).save(p)
    size = p.stat().st_size
    with pytest.raises(ImageError) as e:
        load(p, max_bytes=size - 1)
    assert "too large" in str(e.value) and "limits.max_image_bytes" in str(e.value)
    assert load(p, max_bytes=size).size == (64, 64)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="disappeared"):
        load(tmp_path / "gone.png")


# --- iPhone and web photos: HEIC/HEIF and AVIF ---------------------------------------------------


def _rotated_photo(path: Path, size: tuple[int, int] = (60, 40)) -> None:
    """A landscape image with a red left half and a blue right half, saved in ``path``'s format
    with EXIF orientation 6 ("rotate 90 degrees clockwise to view"), as phones save portraits."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("ext, fmt", [("heic", "HEIF"), ("avif", "AVIF")])
def test_heic_and_avif_photos_load_upright(tmp_path: Path, ext: str, fmt: str) -> None:
    p = tmp_path / f"IMG_0001.{ext}"
    _rotated_photo(p)
    with Image.open(p) as stored:
        assert stored.format == fmt
    im = load(p)
    # Upright: portrait 40x60 with red on top (the left half, turned clockwise).
    assert im.mode == "RGB" and im.size == (40, 60)
    r, _, b = im.getpixel((20, 8))
    assert r > 200 and b < 60
    r, _, b = im.getpixel((20, 52))
    assert b > 200 and r < 60


@pytest.mark.parametrize("ext", ["heic", "avif"])
def test_the_pixel_limit_holds_for_heic_and_avif(tmp_path: Path, ext: str) -> None:
    p = tmp_path / f"big.{ext}"
    _rotated_photo(p)  # 60x40 = 2,400 pixels
    with pytest.raises(ImageError, match=r"is (40 x 60|60 x 40) = 2,400 pixels; at most 2,399 pixels") as e:
        load(p, max_pixels=2399)
    assert "limits.max_image_pixels" in str(e.value)
    assert load(p, max_pixels=2400).size == (40, 60)


@pytest.mark.parametrize("ext", ["heic", "avif"])
def test_a_damaged_heic_or_avif_says_so(tmp_path: Path, ext: str) -> None:
    whole = tmp_path / f"whole.{ext}"
    _noise(200, 120).save(whole, quality=80)
    data = whole.read_bytes()
    for cut in (40, len(data) // 2):
        p = tmp_path / f"cut.{ext}"
        p.write_bytes(data[:cut])
        with pytest.raises(ImageError) as e:
            load(p)
        msg = str(e.value)
        assert '"cut.' in msg and ("damaged" in msg or "incomplete" in msg), msg


# --- which formats are read: limits.image_formats -----------------------------------------------


@pytest.mark.parametrize(
    "fmt, ext, named",
    [
        ("PPM", "ppm", "PPM (Pbmplus image)"),
        ("PCX", "pcx", "PCX (Paintbrush)"),
        ("ICO", "ico", "ICO (Windows Icon)"),
        ("SGI", "sgi", "SGI (SGI Image File Format)"),
        ("DDS", "dds", "DDS (DirectDraw Surface)"),
        ("TGA", "tga", "TGA (Targa)"),  # no signature: named by its extension
    ],
)
def test_formats_outside_the_list_are_refused_naming_their_format(
    tmp_path: Path, fmt: str, ext: str, named: str
) -> None:
    p = tmp_path / f"scan.{ext}"
    _noise(32, 24).save(p, fmt)
    with pytest.raises(ImageError) as e:
        load(p)
    msg = str(e.value)
    assert f'"scan.{ext}" is in the {named} format, which is not accepted here' in msg
    assert "JPEG, PNG, WebP, HEIC/HEIF, AVIF, GIF, BMP or TIFF (limits.image_formats)" in msg
    assert "save or export it as JPEG or PNG" in msg
    # The list decides: an operator who allows the format gets the image.
    assert load(p, formats=(*IMAGE_FORMATS, fmt)).mode == "RGB"


@pytest.fixture
def spy_format() -> Iterator[list[str]]:
    """A Pillow format plugin, registered for real, that notes every file it is asked to open."""
    opened: list[str] = []

    class SpyImageFile(ImageFile.ImageFile):
        format = "I2VDSPY"
        format_description = "test format"

        def _open(self) -> None:
            opened.append("opened")
            self._size = (4, 4)
            self._mode = "L"
            self.tile = []

    Image.register_open("I2VDSPY", SpyImageFile, lambda prefix: prefix.startswith(b"I2VDSPY"))
    try:
        yield opened
    finally:
        del Image.OPEN["I2VDSPY"]
        Image.ID.remove("I2VDSPY")


def test_a_decoder_outside_the_list_never_sees_the_file(tmp_path: Path, spy_format: list[str]) -> None:
    p = tmp_path / "odd.png"
    p.write_bytes(b"I2VDSPY" + bytes(100))
    with pytest.raises(ImageError, match=r"is in the I2VDSPY \(test format\) format, which is not accepted"):
        load(p)
    assert spy_format == []  # only its signature was compared
    with pytest.raises(ImageError):
        load(p, formats=("I2VDSPY",))  # listed, its decoder runs (and its empty image is refused)
    assert spy_format == ["opened"]


def test_only_the_listed_formats_are_read(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(p)
    with pytest.raises(ImageError, match=r"is in the PNG \(Portable network graphics\) format, which is not"):
        load(p, formats=("JPEG",))
    assert load(p, formats=("jpeg", "png")).size == (8, 8)  # any case


def test_image_formats_config_takes_pillow_names_and_common_aliases() -> None:
    assert LimitsConfig().image_formats == list(IMAGE_FORMATS)
    limits = LimitsConfig(image_formats=["jpg", "HEIC", "tif", "png", "JPEG"])
    assert limits.image_formats == ["JPEG", "HEIF", "TIFF", "PNG"]


@pytest.mark.parametrize(
    "formats, says",
    [
        (["JPEG", "PHOTOSHOP"], "'PHOTOSHOP' is not an image format Pillow reads"),
        (["EPS"], "EPS is never read"),
        ([], "must name at least one format"),
    ],
)
def test_image_formats_config_refuses_eps(formats: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        LimitsConfig(image_formats=formats)


# --- memory: 16-bit and float images -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_deep_images_convert_in_bands_not_whole_float64_copies(tmp_path: Path, mode: str) -> None:
    # A 3000x3000 smooth gradient: a few kilobytes of 16-bit PNG, 9 million pixels to convert.
    side = 3000
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    if mode == "I;16":
        p = tmp_path / "deep.png"
        Image.fromarray(
            np.ascontiguousarray(np.broadcast_to((ramp * 65535).astype(np.uint16), (side, side)))
        ).save(p)
    else:
        p = tmp_path / "deep.tif"
        Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (side, side))), "F").save(p)
    tracemalloc.start()  # sees numpy's and Python's allocations (not Pillow's own buffers)
    try:
        im = load(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert im.size == (side, side) and im.getpixel((side - 1, 0)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == (0, 0, 0) and abs(im.getpixel((side // 2, 5))[0] - 128) <= 1
    # The 8-bit result (1 byte a pixel) and bands; a float64 copy alone would be 8 bytes a pixel
    # (the whole conversion took 23 to 27). The float TIFF's own bytes, 4 a pixel, come on top.
    budget = side * side * (3 if mode == "I;16" else 4 + 4)
    assert peak < budget, f"{peak / 2**20:.0f} MiB traced, budget {budget / 2**20:.0f} MiB"


# --- names --------------------------------------------------------------------------------------------


def test_a_file_name_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
    p = tmp_path / "cat\x1b]0;owned\x07.png"
    p.write_text("not a picture")
    with pytest.raises(ImageError) as e:
        load(p)
    msg = str(e.value)
    assert '"cat\\u001b]0;owned\\u0007.png"' in msg and "\x1b" not in msg and "\x07" not in msg


# --- clip_size --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w, h, short, multiple, expected",
    [
        (1920, 1080, 512, 8, (912, 512)),  # 512 * 16/9 = 910.2 -> 912
        (1920, 1080, 512, 64, (896, 512)),  # 910.2 -> 896 (nearest multiple of 64)
        (1080, 1920, 512, 8, (512, 912)),  # portrait mirrors landscape
        (1080, 1920, 768, 64, (768, 1344)),  # 768 * 16/9 = 1365.3 -> 1344
        (1000, 1000, 512, 8, (512, 512)),
        (1000, 1000, 1024, 64, (1024, 1024)),
        (4000, 3000, 512, 8, (680, 512)),  # 682.7 -> 680
        (4000, 3000, 512, 64, (704, 512)),  # 682.7 -> 704
        (1001, 1000, 512, 64, (512, 512)),  # almost square
    ],
)
def test_clip_size(w: int, h: int, short: int, multiple: int, expected: tuple[int, int]) -> None:
    assert clip_size(w, h, short_side=short, multiple=multiple) == expected


@pytest.mark.parametrize("multiple", [8, 64])
def test_clip_size_caps_extreme_aspect(multiple: int) -> None:
    w, h = clip_size(10_000, 1_000, short_side=512, multiple=multiple)  # a 10:1 panorama
    assert h == 512 and w == 1280  # 512 * 2.5
    assert w / h <= MAX_ASPECT
    assert clip_size(1_000, 10_000, short_side=512, multiple=multiple) == (512, 1280)


def test_clip_size_cap_rounds_down() -> None:
    w, h = clip_size(10_000, 1_000, short_side=768, multiple=64)  # 768 * 2.5 = 1920 = 30 * 64
    assert (w, h) == (1920, 768)
    w, h = clip_size(10_000, 1_000, short_side=520, multiple=8)  # 1300 is not a multiple of 8
    assert (w, h) == (1296, 520) and w / h <= MAX_ASPECT


def test_clip_size_small_short_side_is_at_least_one_multiple() -> None:
    assert clip_size(100, 100, short_side=10, multiple=64) == (64, 64)
    w, h = clip_size(300, 100, short_side=10, multiple=64)
    assert h == 64 and w % 64 == 0 and w >= 64


def test_clip_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        clip_size(0, 10, short_side=512, multiple=8)
    with pytest.raises(ValueError):
        clip_size(10, 10, short_side=512, multiple=0)


# --- fit_to -----------------------------------------------------------------------------------------


def test_fit_to_keeps_a_circle_round() -> None:
    # A 300x100 image with a filled circle of radius 40 in the middle; fitting it to 64x64 must crop
    # the sides (100x100 centre) and scale by 0.64: the circle stays round (radius ~25.6).
    src = Image.new("L", (300, 100), 0)
    yy, xx = np.mgrid[0:100, 0:300]
    disc = ((xx - 149.5) ** 2 + (yy - 49.5) ** 2) <= 40**2
    src = Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)).convert("RGB")
    out = fit_to(src, 64, 64)
    assert out.size == (64, 64)
    a = np.asarray(out.convert("L")) > 127
    ys, xs = np.nonzero(a)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width - height) <= 1
    assert 49 <= width <= 54  # 80 * 0.64 = 51.2
    assert abs(xs.mean() - 31.5) < 0.5 and abs(ys.mean() - 31.5) < 0.5


def test_fit_to_crops_centre_of_wide_image() -> None:
    # Three vertical bands 100 px wide: red | green | blue. Fitting to a square keeps only green.
    src = Image.new("RGB", (300, 100), (255, 0, 0))
    src.paste((0, 255, 0), (100, 0, 200, 100))
    src.paste((0, 0, 255), (200, 0, 300, 100))
    out = fit_to(src, 50, 50)
    arr = np.asarray(out).astype(int)
    assert out.size == (50, 50)
    assert arr[:, 2:-2, 1].min() > 230 and arr[:, 2:-2, 0].max() < 25 and arr[:, 2:-2, 2].max() < 25


def test_fit_to_crops_centre_of_tall_image() -> None:
    # Horizontal bands top red | middle green | bottom blue, 100x300 -> 80x40 (2:1) keeps the
    # middle 100x50 rows 125..175: all green.
    src = Image.new("RGB", (100, 300), (255, 0, 0))
    src.paste((0, 255, 0), (0, 100, 100, 200))
    src.paste((0, 0, 255), (0, 200, 100, 300))
    out = fit_to(src, 80, 40)
    arr = np.asarray(out).astype(int)
    assert out.size == (80, 40)
    assert arr[..., 1].min() > 230 and arr[..., 0].max() < 25


def test_fit_to_same_aspect_only_scales() -> None:
    # A 2:1 image with a 1 px black border: scaling to 2:1 keeps the border on all four edges.
    src = Image.new("RGB", (400, 200), (255, 255, 255))
    arr = np.asarray(src).copy()
    arr[:4, :] = arr[-4:, :] = arr[:, :4] = arr[:, -4:] = 0
    out = np.asarray(fit_to(Image.fromarray(arr), 100, 50)).astype(int)
    assert out.shape == (50, 100, 3)
    for edge in (out[0, 10:-10], out[-1, 10:-10], out[10:-10, 0], out[10:-10, -1]):
        assert edge.max() < 90
    assert out[25, 50].min() > 240


# --- resolution_to_short_side -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "res, side", [("512p", 512), ("768p", 768), ("1024p", 1024), (" 64P", 64), ("4096p", 4096)]
)
def test_resolution_to_short_side(res: str, side: int) -> None:
    assert resolution_to_short_side(res) == side


@pytest.mark.parametrize("bad", ["512", "p", "abc", "-512p", "0p", "512px", "8p", "8192p"])
def test_resolution_to_short_side_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        resolution_to_short_side(bad)
