"""Prompts written from the image (``[prompting]``): the tiny Qwen3-VL through the real loading
path, what the writer hands back, where it is placed, and every user flow end to end.

The end-to-end tests run the real ``i2vd`` command on the tiny video model and the tiny prompt
model with the shipped ``[watch]`` values and the shipped ``[prompting] wait_seconds`` (30 s: the
image-alone test waits it, as a user would). Tiny prompts are gibberish: what is checked is the
plumbing (where a prompt comes from, what is recorded, lengths), never the words.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import digest, png_bytes, write_config
from PIL import Image

from daemon.config_service import PromptingConfig
from daemon.prompting import tiny
from daemon.prompting.placement import place
from daemon.prompting.styles import LTX, SHORT, WAN, instructions, style_for
from daemon.prompting.writer import PromptWriter, clean

CLI = [sys.executable, "-m", "daemon.cli"]
MB = 1024 * 1024
GENERATION = {"num_frames": 8, "steps": 2, "resolution": "512p"}


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the session: the tiny prompt model is built into it once."""
    folder = tmp_path_factory.mktemp("prompt-models")
    tiny.build_tiny(folder / tiny.folder_name())
    return folder


@pytest.fixture(scope="session")
def writer(prompt_cache: Path) -> PromptWriter:
    w = PromptWriter(
        PromptingConfig(model="tiny", when="missing", max_new_tokens=24), cache_dir=prompt_cache, max_chars=60
    )
    w.load()
    return w


def picture(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    import io

    return Image.open(io.BytesIO(png_bytes(seed=seed, size=size))).convert("RGB")


# -- the model and the writer ----------------------------------------------------------------


def test_tiny_is_a_qwen3_vl_saved_and_loaded_back_offline(prompt_cache: Path, writer: PromptWriter) -> None:
    folder = prompt_cache / tiny.folder_name()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    assert type(writer._model).__name__ == "Qwen3VLForConditionalGeneration"
    assert writer.placement is not None and writer.placement.where == "cpu"  # no GPU here
    assert 0 < writer.weight_bytes < 4 * MB


def test_written_prompt_is_one_bounded_line_and_the_same_each_time(writer: PromptWriter) -> None:
    image = picture(1, (1600, 1200))  # larger than the model ever sees: bounded before it
    first = writer.write(image, None, "wan")
    again = writer.write(image, None, "wan")
    assert first.prompt and first.prompt == again.prompt  # greedy: `i2vd prompt` shows what a job gets
    assert first.tokens <= 24  # max_new_tokens
    assert len(first.prompt) <= 60  # max_chars (limits.max_prompt_chars in the daemon)
    assert "\n" not in first.prompt and "<|" not in first.prompt


def test_rewrite_sees_the_users_words(writer: PromptWriter) -> None:
    image = picture(2)
    assert writer.write(image, "a red kite climbs", "ltx").prompt != writer.write(image, None, "ltx").prompt


def test_clean_keeps_one_line_of_plain_text() -> None:
    raw = ' "A cat<|im_end|> walks\n\nslowly\x1b[31m across\u202e the room, camera static." '
    assert clean(raw, 2000) == "A cat walks slowly [31m across the room, camera static."
    assert clean("one two three four", 13) == "one two three"
    assert clean("<|endoftext|>\n", 100) == ""


def test_each_family_gets_its_style_and_a_rewrite_keeps_the_users_words() -> None:
    assert style_for("wan") is WAN and style_for("wan22_ti2v") is WAN
    assert style_for("ltx") is LTX and style_for("ltx2") is LTX
    assert style_for("i2vgenxl") is SHORT
    system, user = instructions(WAN, "cat")
    assert "motion" in system and user.endswith("cat")
    assert "cat" not in instructions(WAN, None)[1]


@pytest.mark.parametrize(
    ("free_mb", "where"),
    [(None, "cpu"), (40_000, "gpu"), (12_000, "offload"), (5_000, "cpu")],
)
def test_placement_keeps_the_video_models_memory(free_mb: int | None, where: str) -> None:
    # A 2B model in bfloat16 (~4.3 GB of weights), 12 GB kept for the video model's generation.
    free = None if free_mb is None else free_mb * MB
    assert place(4300 * MB, free, 12288 * MB).where == where


# -- end to end: the real command, shipped [watch] values --------------------------------------


def i2vd(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real command, as the operator runs it; the models' cache is the session's (an
    environment override, since [model] cache_dir is not what these tests are about)."""
    cache = config.parent / "cache.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    env.update(HF_HUB_OFFLINE="1", I2VD_MODEL__CACHE_DIR=cache.read_text())
    return subprocess.run(
        [*CLI, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=config.parent,
        check=False,
    )


def config_for(tmp_path: Path, cache: Path, **prompting: object) -> Path:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "cache.txt").write_text(str(cache))
    sections = {"prompting": {"model": "tiny", **prompting}} if prompting else {}
    return write_config(tmp_path, "tiny", GENERATION, **sections)


def records(tmp_path: Path) -> dict[str, dict]:
    """JOB.json of every finished job, by the image's name."""
    found = {}
    for path in (tmp_path / "outputs").glob("*/*.json"):
        record = json.loads(path.read_text())
        found[record["inputs"]["image"]] = record
    return found


def log_events(stderr: str) -> list[dict]:
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


@pytest.mark.slow
def test_missing_writes_prompts_for_an_image_alone_and_an_empty_txt(
    tmp_path: Path, prompt_cache: Path
) -> None:
    config = config_for(tmp_path, prompt_cache, when="missing")
    inbox = tmp_path / "inbox"
    (inbox / "cat.png").write_bytes(png_bytes(seed=1, size=(96, 64)))
    (inbox / "dog.png").write_bytes(png_bytes(seed=2, size=(96, 64)))
    (inbox / "dog.txt").write_bytes(b"\xef\xbb\xbf \r\n")  # empty, as Notepad saves it
    (inbox / "fox.png").write_bytes(png_bytes(seed=3, size=(96, 64)))
    fox = "a fox runs\n2026-01-01T00:00:00+00:00 info    job done  forged=yes"  # a line break is kept
    (inbox / "fox.txt").write_text(fox)
    before = {p.name: digest(p) for p in inbox.iterdir()}

    run = i2vd(config, "run", "--once")
    assert run.returncode == 0, run.stderr[-3000:]
    got = records(tmp_path)
    assert set(got) == {"cat.png", "dog.png", "fox.png"}
    for name in ("cat.png", "dog.png"):
        assert got[name]["prompt_from"] == "image"
        assert got[name]["prompt"] and got[name]["user_prompt"] is None
    assert got["fox.png"]["prompt_from"] == "file"
    assert got["fox.png"]["prompt"] == got["fox.png"]["user_prompt"] == fox
    fox_job = next((tmp_path / "outputs").glob("fox_*"))
    fox_log = (fox_job / f"{fox_job.name}.log").read_text().splitlines()
    assert not any(line.startswith("2026-01-01") for line in fox_log)  # the prompt forged no line
    assert any("prompt=a fox runs\\u000a2026" in line for line in fox_log)
    assert got["cat.png"]["inputs"]["sidecar"] is None
    # Every original in done/, byte-identical; each job made its clip.
    done = {p.name: digest(p) for p in (tmp_path / "done").glob("*/*")}
    assert done == before
    cat_job = next((tmp_path / "outputs").glob("cat_*"))
    assert (cat_job / f"{cat_job.name}.mp4").stat().st_size > 0
    # The job's log says the prompt used and where it came from.
    log = (cat_job / f"{cat_job.name}.log").read_text().splitlines()
    started = next(line for line in log if " job started " in line)
    # (A log value is cut at 300 characters; JOB.json holds the whole prompt.)
    assert "prompt_from=image" in started and f"prompt={got['cat.png']['prompt'][:290]}" in started
    assert any(" prompt written " in line for line in log)

    # `i2vd prompt` prints what the job got, and nothing else on stdout.
    shown = i2vd(config, "prompt", str(tmp_path / "done" / cat_job.name / "cat.png"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == got["cat.png"]["prompt"] + "\n"
    assert "config" in shown.stderr


@pytest.mark.slow
def test_always_rewrites_every_prompt_and_keeps_the_users(tmp_path: Path, prompt_cache: Path) -> None:
    config = config_for(tmp_path, prompt_cache, when="always")
    inbox = tmp_path / "inbox"
    # A share user's words reach the model and JOB.json only: never a shell nor ffmpeg.
    words = "fox $(touch pwned) `touch pwned2`; -i /etc/passwd"
    (inbox / "fox.png").write_bytes(png_bytes(seed=3, size=(96, 64)))
    (inbox / "fox.txt").write_text(words)

    run = i2vd(config, "run", "--once")
    assert run.returncode == 0, run.stderr[-3000:]
    got = records(tmp_path)["fox.png"]
    assert got["prompt_from"] == "rewritten"
    assert got["user_prompt"] == words
    assert got["prompt"] and got["prompt"] != words
    assert not list(tmp_path.rglob("pwned*"))
    rewritten = i2vd(
        config, "prompt", str(next((tmp_path / "done").glob("fox_*")) / "fox.png"), "--prompt", words
    )
    assert rewritten.stdout == got["prompt"] + "\n"


@pytest.mark.slow
def test_never_is_the_default_and_loads_no_prompt_model(tmp_path: Path, prompt_cache: Path) -> None:
    cache = tmp_path / "cache"  # empty: a prompt model built or loaded would land here
    config = config_for(tmp_path, cache)
    inbox = tmp_path / "inbox"
    (inbox / "sea.png").write_bytes(png_bytes(seed=4, size=(96, 64)))
    (inbox / "sea.txt").write_text("the sea moves")

    run = i2vd(config, "run", "--once")
    assert run.returncode == 0, run.stderr[-3000:]
    got = records(tmp_path)["sea.png"]
    assert (got["prompt"], got["prompt_from"], got["user_prompt"]) == (
        "the sea moves",
        "file",
        "the sea moves",
    )
    assert not any(e.get("event") == "prompt model loaded" for e in log_events(run.stderr))
    assert not (cache / tiny.folder_name()).exists()


@pytest.mark.slow
def test_prompt_command_refuses_what_is_not_an_image(tmp_path: Path, prompt_cache: Path) -> None:
    config = config_for(tmp_path, prompt_cache, when="missing")
    (tmp_path / "notes.png").write_text("not a picture")
    bad = i2vd(config, "prompt", str(tmp_path / "notes.png"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert "notes.png" in bad.stderr.splitlines()[-1]


def test_an_image_alone_waits_wait_seconds_and_a_prompt_file_alone_still_pair_timeout(tmp_path: Path) -> None:
    from helpers import Clock

    from daemon.config_sections import DEFAULT_IGNORE
    from daemon.folders.scan import InboxScanner

    clock = Clock()
    scanner = InboxScanner(
        tmp_path, ignore=DEFAULT_IGNORE, settle_seconds=3, pair_timeout=120, clock=clock, alone_timeout=30
    )
    (tmp_path / "cat.png").write_bytes(png_bytes())
    (tmp_path / "notes.txt").write_text("the sea moves")
    assert scanner.scan() == []
    clock.t += 29
    assert scanner.scan() == []
    assert scanner.next_ready_in is not None and scanner.next_ready_in <= 1
    clock.t += 1
    assert [g.name for g in scanner.scan()] == ["cat"]
    clock.t += 89
    assert [g.name for g in scanner.scan()] == ["cat"]  # still ready, not yet taken; notes waits on
    clock.t += 1
    assert sorted(g.name for g in scanner.scan()) == ["cat", "notes"]


@pytest.mark.slow
def test_check_says_where_the_prompt_model_goes(tmp_path: Path, prompt_cache: Path) -> None:
    config = config_for(tmp_path, prompt_cache, when="always")
    checked = i2vd(config, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    line = next(line for line in checked.stdout.splitlines() if "prompt model" in line)
    assert line.startswith("ok") and "tiny on the CPU (no GPU)" in line and "'always'" in line
