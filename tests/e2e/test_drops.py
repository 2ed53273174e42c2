"""What people actually drop, through ``i2vd run --once`` with the shipped ``[watch]`` settings:
phone and camera photos with the files their tools keep beside them, and hostile shapes.

The ``stub`` generator stands in for the model (no model work): what is proven here is the
inbox walk, grouping, claiming and filing, each job still encoded by real ffmpeg.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from helpers import digest, png_bytes
from PIL import Image

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "daemon.cli"]


def run_once(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = helpers.write_config(
        tmp_path, "stub", {"num_frames": 2, "steps": 1, "fps": 8}, output={"default_recipes": []}
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)], env=env, capture_output=True, text=True, timeout=300
    )


def jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(seed))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_phone_and_camera_photos_with_their_companions_are_all_made(tmp_path: Path) -> None:
    phone = tmp_path / "inbox" / "phone"
    phone.mkdir(parents=True)
    drops = {
        # Lightroom's edit settings beside a JPEG
        "IMG_0001": {
            "IMG_0001.jpg": jpeg_bytes(1),
            "IMG_0001.xmp": b"<x:xmpmeta/>",
            "IMG_0001.txt": b"waves",
        },
        # an iPhone's edit record beside a PNG
        "IMG_0002": {
            "IMG_0002.png": png_bytes(2),
            "IMG_0002.AAE": b"<plist/>",
            "IMG_0002.txt": b"a slow pan",
        },
        # a camera's RAW + JPEG pair: the JPEG is used, the RAW goes along
        "IMG_3": {"IMG_3.CR2": os.urandom(4096), "IMG_3.JPG": jpeg_bytes(3), "IMG_3.txt": b"clouds drift"},
    }
    for files in drops.values():
        for name, data in files.items():
            (phone / name).write_bytes(data)
    (phone / "IMG_9.xmp").write_bytes(b"<x:xmpmeta/>")  # a companion whose photo never came
    before = {name: digest(data) for files in drops.values() for name, data in files.items()}

    once = run_once(tmp_path)

    assert once.returncode == 0, once.stderr[-3000:]
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").rglob("*"))
    done = {job.name.rsplit("_", 2)[0]: job for job in (tmp_path / "done" / "phone").iterdir()}
    assert sorted(done) == sorted(drops)
    for stem, files in drops.items():
        job = done[stem]
        assert {f.name: digest(f) for f in job.iterdir()} == {n: before[n] for n in files}
        outputs = tmp_path / "outputs" / "phone" / job.name
        assert (outputs / f"{job.name}.mp4").is_file()
        record = json.loads((outputs / f"{job.name}.json").read_text())
        assert record["inputs"]["image"] == next(n for n in files if n.lower().endswith((".jpg", ".png")))
    assert os.listdir(phone) == ["IMG_9.xmp"], "a companion alone stays where it is, untouched"


def test_a_thousand_nested_folders_do_not_stop_the_good_pair_beside_them(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.png").write_bytes(png_bytes(4))
    (inbox / "good.txt").write_text("a calm sea")
    with helpers.nested(inbox, 1100) as deepest:
        (deepest / "lost.png").write_bytes(png_bytes(5))
        (deepest / "lost.txt").write_text("never looked at")

        once = run_once(tmp_path)

        assert (deepest / "lost.png").exists(), "what is too deep stays where it is"
    assert once.returncode == 0, once.stderr[-3000:]
    [job] = (tmp_path / "done").iterdir()
    assert sorted(f.name for f in job.iterdir()) == ["good.png", "good.txt"]
    said = [line for line in once.stderr.splitlines() if "levels deep" in line]
    assert len(said) == 1, once.stderr[-3000:]
