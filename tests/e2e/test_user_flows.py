"""What a person on the share and the operator do, end to end, with the shipped settings.

Every test here runs the real ``i2vd`` command in a subprocess on a copy of the shipped
``config.example.toml`` (settle 3 s, poll 1 s, pair timeout 120 s), with real folders and real
ffmpeg. Only the model is swapped, through the environment as an operator would, for the
package's ``stub`` generator: ``stub:S`` takes S seconds a job like a slow GPU would (the
model itself is tested elsewhere). A test that changes one more value says which and why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import EXAMPLE_CONFIG, digest, png_bytes, probe

CLI = [sys.executable, "-m", "daemon.cli"]
pytestmark = pytest.mark.slow


def env(**overrides: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return {**base, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **overrides}


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A share folder holding the shipped config, as ``scripts/run.sh`` lays it out."""
    shutil.copyfile(EXAMPLE_CONFIG, tmp_path / "config.toml")
    (tmp_path / "inbox").mkdir()
    return tmp_path


def i2vd(share: Path, *args: str, timeout: float = 300, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(share / "config.toml")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**overrides),
        cwd=share,
        check=False,
    )


def log_lines(stderr: str) -> list[dict[str, object]]:
    lines = []
    for line in stderr.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def drop(folder: Path, name: str, prompt: str = "the sea moves", seed: int = 0, ext: str = "txt") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.png").write_bytes(png_bytes(seed=seed, size=(96, 64)))
    (folder / f"{name}.{ext}").write_text(prompt)
    return {p.name: digest(p) for p in folder.glob(f"{name}.*")}


def jobs_in(base: Path) -> list[Path]:
    """Job folders under ``base`` (outputs/, done/ or failed/), subfolders included."""
    if not base.exists():
        return []
    return sorted({p.parent for p in base.rglob("*") if p.is_file() and p.parent != base})


def wait_for(what: Callable[[], object], timeout: float, message: str) -> object:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for: {message}")
        time.sleep(0.1)
    return found


# -- run --once on a filled inbox ----------------------------------------------------------------


def test_run_once_takes_every_pair_already_there_and_waits_for_one_still_being_written(share: Path) -> None:
    inbox = share / "inbox"
    before = drop(inbox, "cat") | drop(inbox / "team", "dog", seed=1)
    # A slow upload: the image grows in chunks with pauses shorter than the settle time, and
    # its prompt file comes last. run --once must wait for it, not stop at what is ready.
    slow_png = png_bytes(seed=2, size=(400, 300))

    def upload() -> None:
        with open(inbox / "slow.png", "wb") as f:
            for i in range(0, len(slow_png), len(slow_png) // 4 + 1):
                f.write(slow_png[i : i + len(slow_png) // 4 + 1])
                f.flush()
                time.sleep(1.5)
        (inbox / "slow.txt").write_text("slowly")

    writer = threading.Thread(target=upload)
    writer.start()
    try:
        r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    finally:
        writer.join()
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = {
        (*p.relative_to(share / "outputs").parts[:-1], p.name.rsplit("_", 2)[0])
        for p in jobs_in(share / "outputs")
    }
    assert outputs == {("cat",), ("team", "dog"), ("slow",)}
    done = {
        f.relative_to(share / "done").as_posix().split("/")[-1]: digest(f)
        for f in (share / "done").rglob("*")
        if f.is_file()
    }
    assert done == {**before, "slow.png": digest(slow_png), "slow.txt": digest(b"slowly")}
    assert sorted(os.listdir(inbox)) == ["team"] and os.listdir(inbox / "team") == []
    finished = [e for e in log_lines(r.stderr) if e.get("event") == "run --once finished"]
    assert finished and finished[0]["jobs"] == 3 and finished[0]["failed"] == 0


def test_run_once_fails_an_unpaired_image_after_the_pair_timeout_and_exits_1(share: Path) -> None:
    inbox = share / "inbox"
    drop(inbox, "good")
    (inbox / "lonely.png").write_bytes(png_bytes(seed=3))
    # The pair timeout is the one value changed: 120 s of waiting would prove nothing more.
    r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub", I2VD_WATCH__PAIR_TIMEOUT="6")
    assert r.returncode == 1, r.stderr[-3000:]
    [failed] = jobs_in(share / "failed")
    assert failed.name.startswith("lonely_")
    assert "No prompt file came with lonely.png" in (failed / "error.txt").read_text()
    assert (failed / "lonely.png").read_bytes() == png_bytes(seed=3)
    assert [p.name.split("_")[0] for p in jobs_in(share / "outputs")] == ["good"]
    assert os.listdir(inbox) == []


def test_run_once_on_an_empty_inbox_exits_0_at_once(share: Path) -> None:
    r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    assert r.returncode == 0, r.stderr[-3000:]
    assert jobs_in(share / "outputs") == [] and jobs_in(share / "failed") == []


# -- retry a failed job by dragging its folder back -------------------------------------------------


@pytest.mark.parametrize("sub", [".", "team"])
def test_a_failed_job_folder_dragged_back_is_retried_where_a_fresh_drop_would_go(
    share: Path, sub: str
) -> None:
    inbox = share / "inbox" / sub
    drop(inbox, "cup", prompt='promt = "a cup of tea steams"', ext="toml")
    image = digest(inbox / "cup.png")
    first = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    assert first.returncode == 1, first.stderr[-3000:]
    [failed] = jobs_in(share / "failed")
    assert failed.parent == share / "failed" / sub
    assert "promt" in (failed / "error.txt").read_text()
    assert sorted(os.listdir(failed)) == sorted(["cup.png", "cup.toml", "error.txt", f"{failed.name}.log"])

    # The person fixes the prompt file where it lies, then drags the whole folder back.
    (failed / "cup.toml").write_text('prompt = "a cup of tea steams"\n')
    returned = inbox / failed.name
    os.rename(failed, returned)
    second = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    assert second.returncode == 0, second.stderr[-3000:]

    [out] = jobs_in(share / "outputs")
    assert out.parent == share / "outputs" / sub, "the retried job must not nest under the old job's name"
    assert (out / f"{out.name}.mp4").is_file()
    [done] = jobs_in(share / "done")
    assert sorted(os.listdir(done)) == ["cup.png", "cup.toml"]
    assert digest(done / "cup.png") == image
    assert not returned.exists(), "the emptied folder is removed"
    assert jobs_in(share / "failed") == [], "the daemon's own error.txt and log are never jobs"
    [line] = [e for e in log_lines(second.stderr) if e.get("event") == "job done"]
    assert line["folder"] == (Path("outputs") / sub / out.name).as_posix()


def test_a_users_own_error_txt_pair_is_still_a_job(share: Path) -> None:
    # Only files the daemon wrote are passed over: error.png + error.txt from a person is a job.
    drop(share / "inbox", "error", prompt="an error message dissolves")
    r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    assert r.returncode == 0, r.stderr[-3000:]
    [out] = jobs_in(share / "outputs")
    assert out.name.startswith("error_")


# -- the running daemon: a drop during a long job, status, page, stopping ----------------------------


@pytest.fixture
def daemon(share: Path) -> Iterator[subprocess.Popen[str]]:
    """``i2vd run`` on the shared folder; a stand-in GPU that takes 12 s a job."""
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(share / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(I2VD_MODEL__ID="stub:12"),
        cwd=share,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class Lines:
    """The daemon's log lines as they come, read on a thread so the pipe never fills."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, object]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines += log_lines(line)

    def find(self, event_start: str) -> dict[str, object] | None:
        return next((e for e in list(self.lines) if str(e.get("event", "")).startswith(event_start)), None)


def status(share: Path) -> dict:
    r = i2vd(share, "status", "--json", timeout=60)
    return json.loads(r.stdout)


def test_a_drop_during_a_long_job_is_listed_at_once_and_a_stop_says_what_it_will_do(
    share: Path, daemon: subprocess.Popen[str]
) -> None:
    lines = Lines(daemon)
    inbox = share / "inbox"
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    drop(inbox, "first")
    wait_for(lambda: (status(share).get("current") or {}).get("job"), 30, "the first job to start")

    # A photo dropped while the first job generates (12 s): listed within a few seconds.
    later = drop(inbox, "later", seed=5)
    t0 = time.monotonic()
    seen = wait_for(
        lambda: (
            (s := status(share))
            and (any(a[0] == "later" for a in s.get("arriving", [])) or "later" in s.get("queue", []))
        ),
        8,
        "the new pair in i2vd status while the first job runs",
    )
    assert seen
    current = status(share).get("current") or {}
    assert str(current.get("job", "")).startswith("first_"), "still the first job"
    page = (share / "outputs" / "index.html").read_text()
    assert "later" in page and "No files are waiting" not in page
    # Its settle time ran meanwhile: it is ready (queued) before the first job ends.
    wait_for(lambda: "later" in status(share).get("queue", []), 10, "the new pair to be ready")
    assert str((status(share).get("current") or {}).get("job", "")).startswith("first_")
    assert time.monotonic() - t0 < 12

    # Ctrl-C: the log says at once what will happen, while the job goes on.
    daemon.send_signal(signal.SIGINT)
    said = wait_for(lambda: lines.find("stop requested"), 5, "the stop to be explained in the log")
    assert "finishing first_" in str(said["event"]) and "Ctrl-C again" in str(said["event"])
    assert daemon.wait(60) == 0
    # Warm stop: the first job finished, the later pair was not claimed and is untouched.
    assert [p.name.split("_")[0] for p in jobs_in(share / "outputs")] == ["first"]
    assert {p.name: digest(p) for p in inbox.glob("later.*")} == later


def test_a_second_ctrl_c_interrupts_and_puts_the_files_back(
    share: Path, daemon: subprocess.Popen[str]
) -> None:
    lines = Lines(daemon)
    inbox = share / "inbox"
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    before = drop(inbox, "long")
    wait_for(lambda: (status(share).get("current") or {}).get("job"), 30, "the job to start")
    daemon.send_signal(signal.SIGINT)
    wait_for(lambda: lines.find("stop requested"), 5, "the warm stop to be explained")
    daemon.send_signal(signal.SIGINT)
    said = wait_for(lambda: lines.find("interrupting"), 5, "the cold stop to be explained")
    assert "the files go back to the inbox" in str(said["event"])
    assert daemon.wait(30) == 0
    assert {p.name: digest(p) for p in inbox.glob("long.*")} == before
    assert jobs_in(share / "outputs") == [] and jobs_in(share / "failed") == []


# -- a script submits a job -------------------------------------------------------------------------


def test_a_submitted_job_becomes_a_clip_with_the_values_it_was_given(share: Path, tmp_path: Path) -> None:
    photo = tmp_path / "holiday.png"
    photo.write_bytes(png_bytes(seed=9, size=(96, 64)))
    placed = i2vd(share, "submit", str(photo), "--prompt", "waves roll in", "--set", "num_frames=6")
    assert placed.returncode == 0, placed.stderr
    assert sorted(os.listdir(share / "inbox")) == ["holiday.json", "holiday.png"]
    r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")
    assert r.returncode == 0, r.stderr[-3000:]
    [out] = jobs_in(share / "outputs")
    record = json.loads((out / f"{out.name}.json").read_text())
    assert record["prompt"] == "waves roll in" and record["parameters"]["num_frames"] == 6
    [done] = jobs_in(share / "done")
    assert digest(done / "holiday.png") == digest(photo)


# -- photos straight from a phone ---------------------------------------------------------------------


def test_an_iphone_heic_and_an_avif_photo_become_upright_clips(share: Path) -> None:
    # As a phone saves a portrait shot: the pixels stored landscape (320x240, red left half, blue
    # right half) with EXIF orientation 6, "turn clockwise to view". Upright it is 240x320 with
    # red on top. HEIC is the iPhone's default; AVIF comes from other phones and the web.
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()  # to write the HEIC file here; the daemon registers its own
    inbox = share / "inbox"
    stored = Image.new("RGB", (320, 240), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 160, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, ext in (("IMG_4032", "heic"), ("portrait", "avif")):
        stored.save(inbox / f"{name}.{ext}", quality=90, exif=exif.tobytes())
        (inbox / f"{name}.txt").write_text("the wind moves the grass")
    before = {p.name: digest(p) for p in inbox.iterdir()}

    r = i2vd(share, "run", "--once", I2VD_MODEL__ID="stub")

    assert r.returncode == 0, r.stderr[-3000:]
    outs = {p.name.rsplit("_", 2)[0]: p for p in jobs_in(share / "outputs")}
    assert sorted(outs) == ["IMG_4032", "portrait"]
    for out in outs.values():
        # 512p of a 3:4 portrait: 512 wide, 682.7 -> 680 high (the stand-in model's multiple of 8).
        clip = probe(out / f"{out.name}.mp4")
        assert (clip["width"], clip["height"], clip["frames"]) == (512, 680, 16)
        with Image.open(out / f"{out.name}.poster.png") as poster:
            frame = poster.convert("RGB")
        assert frame.size == (512, 680)
        top, bottom = frame.getpixel((256, 100)), frame.getpixel((256, 580))
        assert top[0] > 2 * top[2] and bottom[2] > 2 * bottom[0], (out.name, top, bottom)
    done = {f.name: digest(f) for f in (share / "done").rglob("*") if f.is_file()}
    assert done == before  # the photos themselves, byte for byte
