"""Small helpers shared by the test modules (imported as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class Clock:
    """An injected clock that moves only when a test moves it (``clock.t += 3``)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def digest(data: bytes | Path) -> str:
    """SHA-256 of bytes or of a file's content: how tests prove originals stay byte-identical."""
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def png_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real PNG of random noise (so it does not compress away), as bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def drop(inbox: Path, name: str, *, seed: int = 0, prompt: str = "the sea moves") -> dict[str, str]:
    """An image and its prompt file dropped into ``inbox`` as a user would; their SHA-256 by name."""
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{name}.png").write_bytes(png_bytes(seed=seed, size=(96, 64)))
    (inbox / f"{name}.txt").write_text(prompt)
    return {p.name: digest(p) for p in inbox.glob(f"{name}.*")}


def wait_for(what: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll ``what`` until it returns something true, and return that; fail naming ``message``."""
    deadline = time.monotonic() + timeout
    while not (found := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for: {message}")
        time.sleep(0.05)
    return found


def request(width: int = 64, height: int = 96, **changes: object) -> Any:
    """A small GenerationRequest on a noise image (fixed seed), with ``changes`` applied."""
    from daemon.engine.interface import GenerationRequest

    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8))
    fields: dict[str, object] = dict(
        image=image,
        width=width,
        height=height,
        prompt="a paper boat drifts",
        negative_prompt="blurry",
        num_frames=4,
        fps=8,
        steps=2,
        guidance_scale=9.0,
        seed=1234,
    )
    fields.update(changes)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
#: The ``[watch]`` values users run: the shipped example config's (settle 3 s, pair timeout 120 s).
SHIPPED_WATCH: dict[str, object] = tomllib.loads(EXAMPLE_CONFIG.read_text())["watch"]
#: Only for tests about something other than readiness (what a bad sidecar does, how a job is
#: encoded): a file is taken as soon as it is seen, an unpaired one at once. Each use says why.
INSTANT_WATCH: dict[str, object] = {"settle_seconds": 0, "pair_timeout": 0, "poll_interval": 0.1}


def write_config(
    tmp_path: Path, model: str, generation: dict[str, object], **sections: dict[str, object]
) -> Path:
    """A config.toml in ``tmp_path`` with the shipped ``[watch]`` values, plus ``sections``
    (a ``watch`` section given here is laid over the shipped one)."""
    table: dict[str, dict[str, object]] = {
        "model": {"id": model, "device": "cpu"},
        "watch": dict(SHIPPED_WATCH),
        "generation": dict(generation),
    }
    for name, values in sections.items():
        table.setdefault(name, {}).update(values)
    lines = []
    for name, values in table.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def nested(top: Path, levels: int, name: str = "d") -> Iterator[Path]:
    """``levels`` folders inside each other under ``top``; yields the innermost, and removes the
    chain (and the plain files in it) afterwards.

    Deeper than ~1,000 levels both os.makedirs and shutil.rmtree (pytest's clean-up of old
    temporary folders too) exceed Python's recursion limit: both are done level by level here.
    """
    chain = [top.joinpath(*[name] * depth) for depth in range(1, levels + 1)]
    try:
        for folder in chain:
            folder.mkdir()
        yield chain[-1]
    finally:
        for folder in reversed(chain):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.listdir(folder):
                    if entry != name:
                        (folder / entry).unlink()
                folder.rmdir()


def probe(path: Path | str) -> dict[str, Any]:
    """Describe the first video stream of ``path`` by decoding it with PyAV.

    Returns codec, pix_fmt, width, height, frames (decoded, so exact), fps (Fraction, the
    stream's average rate) and duration (seconds from the last frame's end, float).
    """
    import av  # Imported here: only tests and diagnostics need it, not the encode path.

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = 0
        last_time: float | None = None
        pix_fmt = None
        width = height = 0
        for frame in container.decode(stream):
            count += 1
            last_time = frame.time
            pix_fmt = frame.format.name
            width, height = frame.width, frame.height
        fmt = container.format.name
    fps_fraction = Fraction(fps) if fps else None
    duration = None
    if last_time is not None and fps_fraction:
        duration = last_time + float(1 / fps_fraction)
    return {
        "format": fmt,
        "codec": codec,
        "pix_fmt": pix_fmt,
        "width": width,
        "height": height,
        "frames": count,
        "fps": fps_fraction,
        "duration": duration,
    }
