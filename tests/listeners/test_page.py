"""outputs/index.html: escaping, queue, progress, throttling, bounded start-up, and a real browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse
from urllib.request import url2pathname

import pytest
from helpers import Clock
from PIL import Image

from daemon.job.record import JobRecord
from daemon.listeners import page_entries, page_render
from daemon.listeners.events import JobFinished
from daemon.listeners.page_entries import Entry, load_recent
from daemon.listeners.page_render import render
from daemon.listeners.share_page import PAGE, SharePage

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
HOSTILE_PROMPT = "<script>alert(1)</script>"
# Spaces, quotes, angle brackets, '#', unicode: all legal in a share's file names.
HOSTILE_JOB = 'Café "best" <clip> #1_20240601_101500'
# A URL the page writes must be percent-encoded: nothing a browser or an attribute could misread.
SAFE_URL = re.compile(r"^[A-Za-z0-9%/._~-]+$")
AT = datetime(2024, 6, 1, 12, 0, tzinfo=datetime.now().astimezone().tzinfo)


# -- fixtures: folders shaped like the daemon's -----------------------------------------------


def make_png(path: Path, size: tuple[int, int] = (192, 288), hue: int = 0) -> None:
    """A real poster frame: a smooth sky-to-ground gradient, so a screenshot shows something picture-like."""
    w, h = size
    top, bottom = (90 + hue // 2, 150, 230 - hue), (30, 60 + hue // 3, 40 + hue // 2)
    img = Image.new("RGB", size)
    img.putdata(
        [
            tuple(int(a + (b - a) * y / h + 20 * x / w) for a, b in zip(top, bottom, strict=True))
            for y in range(h)
            for x in range(w)
        ]
    )
    img.save(path, "PNG")


def job_info(job: str, prompt: str, *, seed: int = 1234, finished: datetime = AT) -> dict[str, Any]:
    """JOB.json as process.run_job writes it (keys and nesting), for a 512p 16-frame clip."""
    recipes = {
        "poster": {"ok": True, "file": f"{job}.poster.png", "error": None},
        "vertical": {"ok": True, "file": f"{job}.vertical.mp4", "error": None},
        "gif": {"ok": True, "file": f"{job}.gif", "error": None},
        "fade": {"ok": False, "file": None, "error": "ffmpeg exited with status 1"},
    }
    iso = finished.isoformat(timespec="seconds")
    return {
        "job": job,
        "status": "done_with_recipe_errors",
        "inputs": {"image": "in.png", "sidecar": "in.txt"},
        "prompt": prompt,
        "negative_prompt": "blurry",
        "parameters": {
            "resolution": "512p",
            "width": 512,
            "height": 768,
            "num_frames": 16,
            "fps": 8,
            "steps": 50,
            "guidance_scale": 9.0,
            "seed": seed,
            "seed_from": "sidecar",
        },
        "source_image": {"width": 1024, "height": 1536},
        "model": {"id": "tiny", "revision": None, "device": "cpu"},
        "master": f"{job}.mp4",
        "recipes": recipes,
        "timings": {
            "queued": iso,
            "started": iso,
            "generated": iso,
            "finished": iso,
            "generate_seconds": 1.0,
            "encode_seconds": 0.5,
        },
        "host": "gpu-box",
        "attempts": 1,
        "versions": {"i2vd": "0"},
    }


def make_done(
    outputs: Path, rel: str, job: str, prompt: str, *, finished: datetime = AT, hue: int = 0
) -> tuple[Path, JobRecord]:
    folder = outputs / rel / job
    folder.mkdir(parents=True)
    info = job_info(job, prompt, finished=finished)
    (folder / info["master"]).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    for r in info["recipes"].values():
        if r["file"] and not r["file"].endswith(".png"):
            (folder / r["file"]).write_bytes(b"clip")
    make_png(folder / f"{job}.poster.png", hue=hue)
    (folder / f"{job}.log").write_text("log\n")
    (folder / f"{job}.json").write_text(json.dumps(info, ensure_ascii=False))
    return folder, JobRecord.model_validate(info)


def make_failed(failed: Path, rel: str, job: str, error: str, files: tuple[str, ...] = ()) -> Path:
    folder = failed / rel / job
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"x")
    (folder / "error.txt").write_text(error + "\n\nTo try again, fix the problem and move the files back.\n")
    (folder / f"{job}.log").write_text("log\n")
    return folder


class Dom(HTMLParser):
    """Tags, links and visible text of a page, with entities decoded as a browser would."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.urls.append(v)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def li_texts(page: str) -> list[str]:
    return [
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)).split())
        for m in re.findall(r"<li>(.*?)</li>", page)
    ]


def busy(
    job: str = "cat_20240601_120000", step: int = 12, total: int | None = 50, **extra: Any
) -> dict[str, Any]:
    cur = {"job": job, "step": step, "total": total, "eta_seconds": 83.0 if total else None}
    return {"state": "busy", "model": "tiny", "current": cur, "queue": [], "queue_length": 0, **extra}


# -- render -------------------------------------------------------------------------------------


def test_hostile_prompt_and_file_names_are_escaped_and_quoted(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    folder, info = make_done(outputs, "sub dir", HOSTILE_JOB, HOSTILE_PROMPT)
    entry = page_entries.done_entry(folder, outputs, info)
    failed = page_entries.failed_entry(
        make_failed(tmp_path / "failed", ".", 'x"<img src=x onerror=alert(1)>_20240601_1', "bad"),
        outputs,
        '<b>"not an image"</b> & more',
    )
    out = render(busy(job=HOSTILE_JOB), [entry, failed])

    assert HOSTILE_PROMPT not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<img src=x" not in out and '<b>"not' not in out
    dom = Dom(out)
    assert "script" not in dom.tags, "the page must carry no script at all"
    assert HOSTILE_PROMPT in dom.all_text  # shown to people as the text they wrote
    assert '<b>"not an image"</b> & more' in dom.all_text
    assert HOSTILE_JOB in dom.all_text
    for url in dom.urls:
        assert SAFE_URL.match(url), url
    master = f"sub dir/{HOSTILE_JOB}/{HOSTILE_JOB}.mp4"
    assert master in [unquote(u) for u in dom.urls]
    assert f"sub dir/{HOSTILE_JOB}/{HOSTILE_JOB}.poster.png" in [unquote(u) for u in dom.urls]
    assert any(unquote(u).startswith('../failed/x"<img') for u in dom.urls)


def test_link_can_never_become_a_scheme_or_fragment() -> None:
    entry = Entry(
        job="javascript:alert(1)", outcome="done", link="javascript:alert(1)", when=None, master="a#b?c.mp4"
    )
    dom = Dom(render({"state": "idle"}, [entry]))
    assert all(SAFE_URL.match(u) for u in dom.urls)
    assert "javascript%3Aalert%281%29/a%23b%3Fc.mp4" in dom.urls


def test_queue_shows_positions_in_order() -> None:
    status = busy(queue=["first", "sub dir/second", "third <x>"], queue_length=3)
    out = render(status, [])
    assert li_texts(out) == ["1 first", "2 second in sub dir", "3 third <x>"]
    assert "Waiting (3)" in out


def test_long_queue_is_cut_and_counted() -> None:
    status = {"state": "busy", "queue": [f"job{i}" for i in range(200)], "queue_length": 1000}
    out = render(status, [])
    items = li_texts(out)
    assert len(items) == page_render.QUEUE_SHOWN
    assert items[0] == "1 job0" and items[-1] == f"{page_render.QUEUE_SHOWN} job{page_render.QUEUE_SHOWN - 1}"
    assert f"and {1000 - page_render.QUEUE_SHOWN} more waiting" in out
    assert "Waiting (1000)" in out


def test_the_waiting_count_counts_what_is_listed_also_files_not_ready_yet() -> None:
    noticed = [["owl", "waiting for its prompt file"], ["team/cup", "arriving"]]
    out = render(busy(queue=[], queue_length=0, arriving=noticed), [])
    assert "Waiting (2)" in out and "Noticed, not ready yet" in out
    out = render(busy(queue=["fox"], queue_length=1, arriving=noticed), [])
    assert "Waiting (3)" in out and li_texts(out)[0] == "1 fox"


def test_progress_step_total_and_eta() -> None:
    text = Dom(render(busy(step=12, total=50), [])).all_text
    assert "cat_20240601_120000" in text
    assert "Step 12 of 50 (24%)" in text
    assert "about 2 min left" in text  # 83 s, rounded up to whole minutes
    assert 'style="width:24%"' in render(busy(step=12, total=50), [])


def test_progress_before_first_step_and_idle() -> None:
    assert "Getting ready" in render(busy(step=0, total=None), [])
    idle = Dom(render({"state": "idle", "current": None, "queue": []}, [])).all_text
    assert "Nothing is being made right now" in idle and "No files are waiting" in idle
    assert "not running" in render({"state": "stopped"}, [])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "about 5 s left"),
        (59.4, "about 59 s left"),
        (61, "about 2 min left"),
        (3 * 3600 + 60, "about 3 h 1 min left"),
        (None, None),
        (float("nan"), None),
        (-1, None),
    ],
)
def test_eta_words(seconds: float | None, text: str | None) -> None:
    assert page_render._eta(seconds) == text


def test_finished_card_shows_prompt_parameters_and_links(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    folder, info = make_done(outputs, ".", "cat_20240601_120000", "the cat waves")
    out = render({"state": "idle"}, [page_entries.done_entry(folder, outputs, info)])
    text = Dom(out).all_text
    for part in (
        "the cat waves",
        "Size 512 × 768",
        "Frames 16",
        "Speed 8 fps",
        "Length 2.0 s",
        "Steps 50",
        "Seed 1234",
        "Finished 1 Jun 2024, 12:00",
        "vertical (MP4)",
        "gif (GIF)",
        "poster (PNG)",
    ):
        assert part in text, part
    assert "“fade” version could not be made: ffmpeg exited with status 1" in text
    urls = Dom(out).urls
    assert "cat_20240601_120000/cat_20240601_120000.mp4" in urls
    assert "cat_20240601_120000/cat_20240601_120000.vertical.mp4" in urls


def test_poster_only_when_the_file_exists(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    folder, info = make_done(outputs, ".", "cat_20240601_120000", "p")
    (folder / "cat_20240601_120000.poster.png").unlink()
    out = render({"state": "idle"}, [page_entries.done_entry(folder, outputs, info)])
    assert "<img" not in out and "no preview picture" in out


def test_newest_first_and_failed_apart() -> None:
    entries = [
        Entry(job=f"j{i}_20240601_12000{i}", outcome="done", link=f"j{i}", when=AT + timedelta(minutes=i))
        for i in range(3)
    ]
    bad = Entry(
        job="bad_20240601_120009", outcome="failed", link="../failed/bad", when=AT, error="no prompt file"
    )
    out = render({"state": "idle"}, [*reversed(entries), bad])
    assert out.index("j2_") < out.index("j1_") < out.index("j0_")
    assert "Could not be made (1)" in out and "no prompt file" in out
    assert "Finished clips (3)" in out


# -- the listener -------------------------------------------------------------------------------


def test_progress_ticks_are_throttled_but_changes_are_not(tmp_path: Path) -> None:
    outputs, failed = tmp_path / "outputs", tmp_path / "failed"
    outputs.mkdir()
    clock = Clock()
    sp = SharePage(outputs, failed, clock=clock, min_interval=2.0)
    index = outputs / PAGE

    sp.on_status(busy(step=1))
    assert sp.renders == 1 and "Step 1 of 50" in index.read_text()
    clock.t += 0.5
    sp.on_status(busy(step=2))
    assert sp.renders == 1, "a progress tick inside min_interval must not rewrite the page"
    clock.t += 0.5
    sp.on_status(busy(job="dog_20240601_120100", step=1))
    assert sp.renders == 2, "a new current job is shown at once"
    clock.t += 0.1
    sp.on_status({**busy(job="dog_20240601_120100", step=1), "state": "idle", "current": None})
    assert sp.renders == 3, "a state change is shown at once"
    clock.t += 0.1
    sp.on_status(busy(step=3))
    clock.t += 2.5
    sp.on_status(busy(step=4))
    assert sp.renders == 5 and "Step 4 of 50" in index.read_text()
    clock.t += 0.1
    sp.on_status(busy(step=5))
    assert sp.renders == 5
    (failed / "x_20240601_120000").mkdir(parents=True)  # filed before the event, as the daemon does
    sp.on_job_finished(
        JobFinished("x_20240601_120000", "failed", failed / "x_20240601_120000", None, "broken")
    )
    assert sp.renders == 5, "a finished job right after a write waits for the status that follows it"
    clock.t += 0.1
    sp.on_status(busy(step=6))
    assert sp.renders == 6 and "broken" in index.read_text(), "... which shows it at once"
    clock.t += 2.5
    (failed / "y_20240601_120000").mkdir(parents=True)
    sp.on_job_finished(JobFinished("y_20240601_120000", "failed", failed / "y_20240601_120000", None, "bent"))
    assert sp.renders == 7 and "bent" in index.read_text(), "after a quiet while, a finished job at once"
    clock.t += 0.1
    sp.on_status(busy(step=7))
    sp.close()
    assert sp.renders == 8, "close() publishes the last throttled status"
    assert "Step 7 of 50" in index.read_text() and "broken" in index.read_text()
    assert not [p for p in outputs.iterdir() if p.name != PAGE], "no temporary files left behind"


def test_finished_event_adds_an_entry_with_poster(tmp_path: Path) -> None:
    outputs, failed = tmp_path / "outputs", tmp_path / "failed"
    make_done(outputs, "holiday", "sea_20240601_120000", "waves roll in")
    sp = SharePage(outputs, failed)
    assert len(sp._entries) == 1  # seeded from disk
    folder2, info2 = make_done(outputs, "holiday", "sun_20240601_130000", "the sun sets")
    sp.on_job_finished(JobFinished("sun_20240601_130000", "done", folder2, info2, None))
    out = (outputs / PAGE).read_text()
    assert out.index("the sun sets") < out.index("waves roll in")
    assert 'src="holiday/sun_20240601_130000/sun_20240601_130000.poster.png"' in out


def test_the_cards_kept_between_renders_make_the_page_a_fresh_render_makes(tmp_path: Path) -> None:
    outputs, failed = tmp_path / "outputs", tmp_path / "failed"
    sp = SharePage(outputs, failed, keep=3, min_interval=0.0)  # every finished job written at once
    for i in range(6):  # twice round the kept entries: dropped ones must not come back
        job = f"sea{i}_20240601_12{i:02d}00"
        if i % 3 == 2:
            folder = make_failed(failed, ".", job, f"reason {i}")
            sp.on_job_finished(JobFinished(job, "failed", folder, None, f"reason {i}"))
        else:
            folder, info = make_done(outputs, ".", job, f"waves {i}", finished=AT + timedelta(minutes=i))
            sp.on_job_finished(JobFinished(job, "done", folder, info, None))
        page = (outputs / PAGE).read_text().rstrip(" ")  # padded to whole blocks (a full disk)
        fresh = render({"state": "unknown"}, list(reversed(sp._entries)))
        cut = page.index("<h2>Finished clips")
        assert page[cut:] == fresh[fresh.index("<h2>Finished clips") :], i
    assert "waves 1" not in page and "reason 2" not in page
    assert "waves 3" in page and "waves 4" in page and "reason 5" in page


def test_a_failed_job_dragged_back_to_retry_leaves_the_page(tmp_path: Path) -> None:
    outputs, failed, inbox = tmp_path / "outputs", tmp_path / "failed", tmp_path / "inbox"
    make_done(outputs, ".", "sea_20240601_120000", "waves roll in")
    cup = make_failed(failed, "team", "cup_20240601_121500", "unknown key 'promt'", ("cup.png", "cup.toml"))
    sp = SharePage(outputs, failed)
    sp.on_status({"state": "idle"})
    assert "cup_20240601_121500" in (outputs / PAGE).read_text()
    (inbox / "team").mkdir(parents=True)
    cup.rename(inbox / "team" / cup.name)  # the person drags the folder back to try again
    sp.on_status({"state": "busy", "current": {"job": "cup_20240601_123000"}})
    page = (outputs / PAGE).read_text()
    assert "cup_20240601_121500" not in page and "Could not be made" not in page
    assert "waves roll in" in page  # the done job, whose folder is there, stays


def test_start_up_reads_only_the_newest_keep_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs, failed = tmp_path / "outputs", tmp_path / "failed"
    for i in range(30):
        rel = "deep/er" if i % 3 == 0 else "."
        make_done(
            outputs, rel, f"job{i}_20240601_12{i:02d}00", f"prompt {i}", finished=AT + timedelta(minutes=i)
        )
    for i in range(5):
        make_failed(
            failed, "sub", f"bad{i}_20240601_12{i * 7 + 1:02d}30", f"reason {i}", ("bad.png", "bad.txt")
        )
    (outputs / ".hidden_20991231_235959").mkdir()  # dot-folders are not jobs
    (outputs / PAGE).write_text("old page")
    reads: list[Path] = []
    real = page_entries._read_record

    def counting(base: Path, rel: Path) -> JobRecord:
        reads.append(rel)
        return real(base, rel)

    monkeypatch.setattr(page_entries, "_read_record", counting)

    recent = load_recent(outputs, failed, keep=6)
    assert len(reads) <= 6
    names = [e.job for e in recent]
    # Newest by the time in their names: job29..job25 (12:29..12:25) and bad4 (12:29:30).
    assert set(names) == {f"job{i}_20240601_12{i:02d}00" for i in range(25, 30)} | {"bad4_20240601_122930"}
    bad = next(e for e in recent if e.outcome == "failed")
    assert bad.link == "../failed/sub/bad4_20240601_122930"
    assert bad.files == ("bad.png", "bad.txt") and bad.error and bad.error.startswith("reason 4")
    deep = next(e for e in recent if e.job.startswith("job27"))
    assert deep.link == "deep/er/job27_20240601_122700"


def test_rendering_problems_never_raise(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "outputs"
    not_a_folder.write_text("a file where the folder should be")
    sp = SharePage(not_a_folder, tmp_path / "missing")
    sp.on_status(busy())
    sp.on_status({"state": "busy", "current": {"job": None}, "queue": "garbage", "queue_length": "x"})
    sp.on_job_finished(JobFinished("j_20240601_120000", "done", tmp_path / "nowhere", None, None))
    sp.close()
    assert sp.renders == 0
    # Odd values from a future status still render, as a page that says what it can.
    out = render({"state": 3, "current": {"job": "j", "step": "a", "total": 0}, "queue": None}, [])
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "Getting ready" in out and "No files are waiting" in out


# -- a real browser -----------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium here: scripts/test.sh installs Debian's 'chromium' package when run as root")
    share = tmp_path / "share"
    outputs, failed = share / "outputs", share / "failed"
    make_done(
        outputs,
        ".",
        "beach_20240601_090000",
        "waves roll onto the beach, gentle camera pan",
        finished=AT - timedelta(hours=2),
        hue=60,
    )
    make_done(outputs, "team ü", HOSTILE_JOB, HOSTILE_PROMPT, finished=AT, hue=150)
    make_failed(
        failed,
        ".",
        "scan_20240601_100000",
        "scan.pdf is not an image we can read (it looks like a PDF document). Save it as JPEG or PNG.",
        ("scan.pdf", "scan.txt"),
    )
    sp = SharePage(outputs, failed)
    sp.on_status(
        busy(
            job="forest_20240601_121500",
            step=31,
            total=50,
            queue=["mountain", "team ü/lake at dawn", 'x "<y>"'],
            queue_length=3,
        )
    )
    sp.close()
    index = outputs / PAGE
    profile = tmp_path / "profile"

    dumped = chromium(exe, profile, "--dump-dom", index.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    text = dom.all_text
    assert "script" not in dom.tags
    for shown in (
        "forest_20240601_121500",
        "Step 31 of 50 (62%)",
        "1 mountain",
        "2 lake at dawn in team ü",
        '3 x "<y>"',
        "beach_20240601_090000",
        "waves roll onto the beach",
        HOSTILE_JOB,
        HOSTILE_PROMPT,
        "scan_20240601_100000",
        "it looks like a PDF document",
        "Could not be made (1)",
        "Finished clips (2)",
    ):
        assert shown in text, shown
    assert text.index(HOSTILE_JOB) < text.index("beach_20240601_090000"), "newest first"
    # Every link and picture resolves to a file on the share, as the browser resolved it.
    assert sum(1 for t in dom.tags if t == "img") == 2
    assert len(dom.urls) >= 15
    for url in dom.urls:
        target = urlparse(urljoin(index.as_uri(), url))
        assert target.scheme == "file", url
        assert Path(url2pathname(target.path)).exists(), url

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "index.png"
    shot.unlink(missing_ok=True)
    taken = chromium(exe, profile, f"--screenshot={shot}", "--window-size=1280,1600", index.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1280, 1600)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "the screenshot looks blank"
