"""Loading a job's image as upright RGB, and fitting it to the clip's size.

Rules worth knowing (README material):

- Files over ``limits.max_image_bytes`` are refused before anything is decoded, and so are
  images whose header announces more than ``limits.max_image_pixels`` pixels (width x height),
  so a small file claiming huge dimensions (a "decompression bomb") is never decoded.
- The format is recognised from the content, not the extension (a JPEG named ``.png`` works).
  Only the formats in ``limits.image_formats`` are tried (by default JPEG, PNG, WebP, HEIC/HEIF,
  AVIF, GIF, BMP and TIFF): Pillow's many other decoders, some old and rarely exercised, never
  see a share user's bytes. A file in another format fails naming its format. EPS/PostScript is
  never read, whatever the list says: Pillow would run the external Ghostscript program on it.
- HEIC/HEIF (iPhone photos) is read through the pillow-heif plugin, AVIF through Pillow's own.
- Truncated files are refused (the whole image is decoded up front).
- EXIF orientation is applied; broken EXIF data is ignored (the image is used as stored). A HEIC
  file's rotation is applied by its decoder (which then marks the EXIF orientation as done).
- Animated images (GIF, APNG, WebP) and multi-page TIFFs use their first frame.
- Transparency (RGBA, LA, palette with a transparent colour) is composited over **white**.
- 16-bit images are scaled to 8 bits (65535 -> 255), not clipped; 32-bit float images are taken
  as 0..1 if all values lie there, else 0..255, else 0..65535. They are converted a band of rows
  at a time, so the conversion needs about one byte a pixel beyond the image itself. CMYK is
  converted without colour management (Pillow's plain CMYK -> RGB formula).
- The clip's size, and the image fitted to it, are ``daemon.sizing``'s.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.errors import ImageError
from daemon.folders.trust import NotRegular, read_regular
from daemon.job.printable import printable

# Once, here, where every job's image is opened. Thumbnails, depth maps and auxiliary images of a
# HEIC file are never used: not reading them leaves less of a stranger's file to parse.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
Image.init()

_BASE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_OPTIONAL_EXTS = {".avif", ".heic", ".heif"}
# Extensions that name an image; load_image itself decides by content, not by name.
IMAGE_EXTS = frozenset(_BASE_EXTS | (_OPTIONAL_EXTS & set(Image.registered_extensions())))

# Formats Pillow must never open, whatever limits.image_formats says: EPS runs the external
# Ghostscript program.
REFUSED_FORMATS = frozenset({"EPS"})

# How messages name the formats (Pillow's names otherwise).
_SHOWN_FORMATS = {"WEBP": "WebP", "HEIF": "HEIC/HEIF"}

# 16-bit and float images are converted this many pixels at a time.
_BAND_PIXELS = 1 << 20

# What decoding a damaged file can raise (pillow-heif reports a damaged HEIC file as RuntimeError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    RuntimeError,
)

# What reading damaged EXIF data can raise.
_EXIF_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int, max_bytes: int, formats: Sequence[str]
) -> Image.Image:
    """The image at ``path`` as an upright RGB image, fully decoded; ImageError if it cannot be used.

    Only the Pillow formats named in ``formats`` (``limits.image_formats``) are tried.
    """
    path = Path(path)
    name = printable(path.name)
    data = _read_capped(path, name, max_bytes)
    allowed = [f for f in (f.upper() for f in formats) if f in Image.OPEN and f not in REFUSED_FORMATS]
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own global limit; our own check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _raise_global_limit(max_pixels)
            im = Image.open(io.BytesIO(data), formats=allowed)
    except Image.DecompressionBombError as e:
        # Far above even Pillow's own hard limit: its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(_too_many_pixels(name, int(found.group(1)) if found else None, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(_unreadable(name, data, allowed)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(_damaged(name, e)) from None

    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f'"{name}" is an empty image ({width}x{height} pixels).')
    if width * height > max_pixels:
        raise ImageError(_too_many_pixels(name, (width, height), max_pixels))

    try:
        im.load()  # decodes everything now, so a truncated file fails here
        # Broken EXIF data: the image is used as stored. In place: the copy returned otherwise, for
        # every image (even one that needs no turn), is another 4 bytes a pixel.
        with contextlib.suppress(*_EXIF_ERRORS):
            ImageOps.exif_transpose(im, in_place=True)
        return _to_rgb(im, name)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(_too_many_pixels(name, None, max_pixels)) from None
    except _DECODE_ERRORS as e:
        raise ImageError(_damaged(name, e)) from None
    except MemoryError:
        raise ImageError(
            f'"{name}" needs more memory to decode than this machine has free; use a smaller image.'
        ) from None
    finally:
        im.close()


def _read_capped(path: Path, name: str, max_bytes: int) -> bytes:
    try:
        # In chunks, as much as the file holds: never a buffer of max_bytes reserved up front.
        data = read_regular(path, max_bytes)
    except NotRegular:
        raise ImageError(
            f'"{name}" is a link or a special file, not an image. Put the image file itself in the inbox.'
        ) from None
    except FileNotFoundError:
        raise ImageError(f'The image "{name}" disappeared before it could be read.') from None
    except IsADirectoryError:
        raise ImageError(f'"{name}" is a folder, not an image.') from None
    except OSError as e:
        raise ImageError(f'The image "{name}" could not be read ({e.strerror or "read error"}).') from None
    if len(data) > max_bytes:
        raise ImageError(
            f'The image "{name}" is too large: it is over {_mb(max_bytes)} '
            f"(the limit is limits.max_image_bytes = {max_bytes:,} bytes). "
            "Save it as a JPEG or scale it down, then try again."
        )
    if not data:
        raise ImageError(f'The image "{name}" is an empty file (0 bytes); copy it again.')
    return data


def shown_formats(formats: Sequence[str]) -> str:
    """``["JPEG", "PNG", "WEBP"]`` -> ``"JPEG, PNG or WebP"``."""
    shown = [_SHOWN_FORMATS.get(f, f) for f in formats]
    if len(shown) < 2:
        return "".join(shown) or "(none)"
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def _unreadable(name: str, data: bytes, allowed: Sequence[str]) -> str:
    found = _identify(data[:16], Path(name).suffix.lower())
    if found is None:
        return (
            f'"{name}" is not an image this program can read: it accepts {shown_formats(allowed)} '
            "images. If it opens on your computer, export or save it again as PNG or JPEG."
        )
    fmt, description = found
    what = _SHOWN_FORMATS.get(fmt, fmt)
    if description and description.upper() != fmt:
        what += f" ({description})"
    if fmt in allowed:  # the right kind of file, but its decoder could not make sense of it
        return (
            f'The image "{name}" is in the {what} format but cannot be read: it is damaged, or it was '
            "not copied completely. Copy it again; if it opens on your computer, save it again as "
            "PNG or JPEG."
        )
    return (
        f'The image "{name}" is in the {what} format, which is not accepted here: images must be '
        f"{shown_formats(allowed)} (limits.image_formats). Open it on your computer and save or "
        "export it as JPEG or PNG, then drop it again."
    )


def _identify(prefix: bytes, suffix: str) -> tuple[str, str | None] | None:
    """The format a file's first bytes (and, where they agree, its extension) point to, or None.

    Only the plugins' signature checks run (byte comparisons): no decoder of a format that is
    not allowed ever parses the file. Some signatures are weak (a TGA file can pass for a Windows
    cursor), so the format its extension names goes first when its own check does not say no.
    """
    by_ext = Image.registered_extensions().get(suffix)
    candidates = sorted(Image.OPEN.items(), key=lambda item: item[0] != by_ext)
    for fmt, (factory, accept) in candidates:
        if accept is None:
            if fmt == by_ext:  # no signature to check: the extension is all there is
                return fmt, getattr(factory, "format_description", None)
            continue
        try:
            matched = accept(prefix)
        except Exception:  # a signature check that cannot judge these bytes says no
            continue
        if matched and not isinstance(matched, str):
            return fmt, getattr(factory, "format_description", None)
    return None


def _raise_global_limit(max_pixels: int) -> None:
    # Pillow refuses outright above 2x its global limit while opening; keep that backstop at or
    # above the configured limit, so a large limit set by the operator is honoured (never lowered).
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _too_many_pixels(name: str, size: tuple[int, int] | int | None, max_pixels: int) -> str:
    if size is None:
        what = f"has far more than {max_pixels:,} pixels"
    elif isinstance(size, int):
        what = f"has {size:,} pixels"
    else:
        w, h = size
        what = f"is {w:,} x {h:,} = {w * h:,} pixels"
    return (
        f'The image "{name}" {what}; at most {max_pixels:,} pixels are allowed '
        "(limits.max_image_pixels). Scale it down (for example to 4000 pixels on the long side) "
        "and try again."
    )


def _damaged(name: str, error: BaseException) -> str:
    text = str(error).lower()
    if "truncated" in text or "premature" in text or isinstance(error, EOFError):
        return (
            f'The image "{name}" is incomplete (the file ends too early): it was probably not '
            "copied completely. Copy it again."
        )
    return (
        f'The image "{name}" is damaged or uses a variant this program cannot decode. '
        f"Open it on your computer and save it again as PNG or JPEG. ({_plain(error)})"
    )


def _plain(error: BaseException) -> str:
    return str(error).strip().rstrip(".") or "decoder error"


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _to_8bit(im).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageError(
            f'The image "{name}" uses a colour mode ({mode}) this program cannot convert; '
            "save it again as an RGB PNG or JPEG."
        ) from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit single-channel image as mode L (0..255), scaled rather than clipped.

    A band of rows at a time: the only whole-image buffer made is the 8-bit result, so a
    40-million-pixel image needs 40 MB here, not the gigabytes of a float64 copy and its temporaries.
    """
    width, height = im.size
    rows = max(1, _BAND_PIXELS // width)
    out = np.empty((height, width), dtype=np.uint8)
    if im.mode == "F":
        lo, hi = 0.0, 0.0  # as if a 0 were among the values: 0..1 and 0..255 start at 0
        for y in range(0, height, rows):
            band = _finite(np.asarray(im.crop((0, y, width, min(height, y + rows)))))
            lo, hi = min(lo, float(band.min(initial=0.0))), max(hi, float(band.max(initial=0.0)))
        full = 1.0 if lo >= 0 and hi <= 1.0 else 255.0 if lo >= 0 and hi <= 255.0 else 65535.0
        scale = np.float32(255.0 / full)
        for y in range(0, height, rows):
            band = _finite(np.asarray(im.crop((0, y, width, min(height, y + rows)))))
            band *= scale
            np.rint(band, out=band)
            np.clip(band, 0, 255, out=band)
            out[y : y + rows] = band
    else:  # I;16* hold 0..65535; mode I here comes from 16-bit PNG/TIFF/PGM files
        for y in range(0, height, rows):
            band = np.asarray(im.crop((0, y, width, min(height, y + rows)))).astype(np.int32)
            np.clip(band, 0, 65535, out=band)
            band += 128
            band //= 257  # round(v * 255 / 65535): v / 257, rounded half up (never exactly half)
            out[y : y + rows] = band
    return Image.fromarray(out, "L")


def _finite(band: np.ndarray) -> np.ndarray:
    """A float32 copy of ``band`` with NaN and the infinities as 0."""
    return np.nan_to_num(band.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
