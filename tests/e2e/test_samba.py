"""Uploads over a real Samba share into the inbox the daemon watches.

A private smbd (see ``sambahelper``) serves the inbox on a loopback port; the real
``smbclient`` uploads into it slowly while the real Service (``stub`` generator, poll mode,
settle_seconds = 2) watches. The file that lands in done/ must be the whole upload, byte for
byte: taken any earlier, it would be truncated (and its job would fail as a broken image).

Skipped, saying why, only where smbd or smbclient is missing or smbd cannot start.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import digest
from PIL import Image
from sambahelper import SambaServer, SambaUnavailable

from daemon.config import Settings
from tests.folders.test_hotfolder import Running, entries, filed, settings_for, wait_for

# Drives a private smbd: seconds each (`pytest -m 'not slow'` leaves it out).
pytestmark = pytest.mark.slow

MiB = 1 << 20
SETTLE = 2.0


def noise_png(width: int, height: int, seed: int) -> bytes:
    """A real PNG that does not compress: random pixels. 3000 x 2800 is about 25 MB."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture
def samba(tmp_path: Path) -> Iterator[tuple[SambaServer, Settings]]:
    settings = settings_for(
        tmp_path,
        watch={"mode": "poll", "settle_seconds": SETTLE, "poll_interval": 0.2, "pair_timeout": 120},
        limits={"max_image_bytes": 200 * MiB},
    )
    server = SambaServer(tmp_path / "samba", settings.paths.inbox)
    try:
        server.start()
    except SambaUnavailable as e:
        pytest.skip(f"no Samba to test against: {e}")
    try:
        yield server, settings
    finally:
        server.stop()


def sizes_until_taken(upload_alive: Callable[[], bool], path: Path, timeout: float = 120) -> list[int]:
    """The sizes ``path`` showed in the inbox, sampled from the start of the upload until the
    daemon took it (or the upload ended and it was gone): -1 for "not there"."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if not seen or seen[-1] != size:
            seen.append(size)
        if size == -1 and len(seen) > 1 and not upload_alive():
            break
        time.sleep(0.02)
    return seen


def assert_taken_only_whole(seen: list[int], size: int) -> None:
    # The last size the file showed in the inbox before the daemon took it must be its full
    # size. A claim of a file still being written would leave its last size short: smbd then
    # writes the rest into the moved file, so only this shows that it was taken too early.
    shown = [s for s in seen if s >= 0]
    assert shown and shown[-1] == size, (
        f"taken from the inbox at {shown[-1] if shown else None} of {size} bytes"
    )
    assert seen[-1] == -1, "the daemon never took the upload"


def test_a_slow_smb_upload_that_stalls_longer_than_settle_is_not_taken_early(
    samba: tuple[SambaServer, Settings], tmp_path: Path
) -> None:
    server, settings = samba
    data = noise_png(3000, 2800, seed=1)
    assert len(data) > 20 * MiB
    prompt = tmp_path / "big.txt"
    prompt.write_text("the camera drifts over the noise")
    first = 17 * MiB  # smbclient sends in 16 MiB blocks: the server sees 16 MiB, then stops
    with Running(settings):
        server.put(prompt, "big.txt")  # the pair is complete from the start
        # A stall of 5 s with the file open on the server, over twice settle_seconds: the
        # upload looks finished by size and mtime, only smbd still holds it for writing.
        upload = server.slow_put(
            [(b"", 1.0), (data[:first], 2 * SETTLE + 1.0), (data[first:], 0.0)],
            "big.png",
        )
        seen = sizes_until_taken(upload.is_alive, settings.paths.inbox / "big.png")
        upload.join()
        assert server.upload_error is None, server.upload_error
        assert any(0 < s < len(data) for s in seen), f"the upload never showed as partial: {seen}"
        assert_taken_only_whole(seen, len(data))
        wait_for(
            lambda: "big.png" in filed(settings.paths.done) or bool(entries(settings.paths.failed)),
            120,
            "the uploaded job to finish",
        )
    failed = filed(settings.paths.failed)
    assert not failed, f"taken before the upload finished (sizes seen {seen}): {failed}"
    [job] = filed(settings.paths.done)["big.png"]
    assert digest(job / "big.png") == digest(data)
    assert digest(job / "big.txt") == digest(prompt)
    assert (settings.paths.outputs / job.name / f"{job.name}.mp4").is_file()


def test_an_smb_upload_with_pauses_shorter_than_settle_is_taken_whole_by_settling_alone(
    samba: tuple[SambaServer, Settings], tmp_path: Path
) -> None:
    # As on a daemon that is itself an SMB client, where the kernel cannot tell who writes:
    # the open-for-writing check is off, and settle_seconds alone must hold the file back.
    server, settings = samba
    data = noise_png(3000, 2800, seed=2)
    prompt = tmp_path / "pan.txt"
    prompt.write_text("a slow pan")
    with Running(settings) as service:
        service.scanner._lease_check = False
        server.put(prompt, "pan.txt")
        upload = server.slow_put(
            [(b"", SETTLE * 0.6), (data[: 17 * MiB], SETTLE * 0.6), (data[17 * MiB :], 0)], "pan.png"
        )
        seen = sizes_until_taken(upload.is_alive, settings.paths.inbox / "pan.png")
        upload.join()
        assert server.upload_error is None, server.upload_error
        assert_taken_only_whole(seen, len(data))
        wait_for(
            lambda: "pan.png" in filed(settings.paths.done) or bool(entries(settings.paths.failed)),
            120,
            "the uploaded job to finish",
        )
        assert service.scanner._lease_check is False
    assert not filed(settings.paths.failed), f"taken before the upload finished (sizes seen {seen})"
    [job] = filed(settings.paths.done)["pan.png"]
    assert digest(job / "pan.png") == digest(data)


def test_upload_as_part_then_rename_over_smb(samba: tuple[SambaServer, Settings], tmp_path: Path) -> None:
    # What many clients do: write NAME.part (ignored as junk), then rename it when complete.
    server, settings = samba
    data = noise_png(800, 600, seed=3)
    local = tmp_path / "local.png"
    local.write_bytes(data)
    prompt = tmp_path / "renamed.txt"
    prompt.write_text("waves")
    with Running(settings):
        server.run(f'put "{prompt}" "renamed.txt"; put "{local}" "renamed.png.part"')
        time.sleep(SETTLE + 1.0)  # long enough to be taken, were .part files not ignored
        assert (settings.paths.inbox / "renamed.png.part").exists()
        assert not entries(settings.paths.failed), "the .part upload or its lone prompt was taken"
        server.run('rename "renamed.png.part" "renamed.png"')
        wait_for(lambda: "renamed.png" in filed(settings.paths.done), 60, "the renamed upload to be done")
    [job] = filed(settings.paths.done)["renamed.png"]
    assert digest(job / "renamed.png") == digest(data)
    assert not os.listdir(settings.paths.inbox)
