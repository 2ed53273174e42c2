"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image

from daemon.config import load_settings
from daemon.encode import FFmpeg, select_ffmpeg
from daemon.generate import StubGenerator
from daemon.service import Service

CLI = [sys.executable, "-m", "daemon.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_usage_and_config_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    r = run("run", "--bogus", cwd=tmp_path)
    assert r.returncode == 2
    (tmp_path / "config.toml").write_text("[watch]\nsettle_seconds = -1\n")
    r = run("recipes", cwd=tmp_path)  # ./config.toml is found without --config
    assert r.returncode == 2
    assert "watch.settle_seconds" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("recipes", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_recipes_lists_builtins_and_operator_changes(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[recipes.square]\ndescription = "for feeds"\nfilters = ["crop=ih:ih"]\n'
        "[recipes.gif]\nenabled = false\n"
    )
    r = run("recipes", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [
        line.split()[1] if line.startswith("*") else line.split()[0] for line in r.stdout.splitlines()[:-1]
    ]
    assert "square" in names and "vertical" in names and "gif" not in names
    assert any(line.startswith("*") and "poster" in line for line in r.stdout.splitlines())


def test_submit_checks_values_then_places_both_files(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("")
    image = tmp_path / "-odd name.png"  # a leading dash must not be read as an option
    Image.new("RGB", (64, 48), 200).save(image)
    bad = run("submit", "--prompt", "waves", "--set", "num_frames=5000", "--", str(image), cwd=tmp_path)
    assert bad.returncode == 2 and "num_frames" in bad.stderr
    assert not any((tmp_path / "inbox").iterdir())

    ok = run(
        "submit",
        "--prompt",
        "waves",
        "--set",
        "seed=3",
        "--set",
        'recipes=["poster"]',
        "--",
        str(image),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    files = sorted(p.name for p in (tmp_path / "inbox").iterdir())
    assert files == ["odd name.json", "odd name.png"]
    assert json.loads((tmp_path / "inbox" / "odd name.json").read_text()) == {
        "prompt": "waves",
        "seed": 3,
        "recipes": ["poster"],
    }
    assert (tmp_path / "inbox" / "odd name.png").read_bytes() == image.read_bytes()
    again = run("submit", "--prompt", "waves", "--", str(image), cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "inbox" / "odd name-2.png").exists()


def test_status_tells_whether_the_daemon_runs(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[model]\nid = "stub"\n[watch]\npoll_interval = 0.05\n')
    r = run("status", cwd=tmp_path)
    assert r.returncode == 1 and "NOT running" in r.stdout

    settings = load_settings(tmp_path / "config.toml")
    service = Service(settings, StubGenerator(), watch=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        while not (settings.state_dir / "status.json").exists():
            runner.join(0.05)
        r = run("status", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stdout
        status = json.loads(r.stdout)
        assert status["running"] is True and status["state"] == "idle" and status["model"] == "stub"
    finally:
        service.request_stop()
        runner.join(30)
    r = run("status", cwd=tmp_path)
    assert r.returncode == 1 and "stopped" in r.stdout


def test_run_once_fails_an_empty_recipe_output_and_check_names_the_ffmpeg(
    tmp_path: Path, ffmpeg_binary: FFmpeg
) -> None:
    # The user's first day on Debian: ffmpeg 5.1 exits 0 with an empty file for "late"; before
    # outputs were read back, JOB.json said ok and run --once exited 0.
    # The pinned binary by default; Debian's named in the config.
    named = "" if ffmpeg_binary == select_ffmpeg(None) else f'ffmpeg = "{ffmpeg_binary.path}"\n'
    (tmp_path / "config.toml").write_text(
        '[model]\nid = "stub"\n[generation]\nnum_frames = 4\nsteps = 2\n'
        # About encoding, not settling: with settle_seconds 3 run --once can race the settle clock
        # for a pair dropped just before it starts (reported separately).
        "[watch]\nsettle_seconds = 0\n"
        f'[output]\ndefault_recipes = ["poster", "late"]\n{named}'
        '[recipes.late]\nfilters = ["select=gte(n\\\\,6)"]\n'
    )
    check = run("check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ok    ffmpeg: {ffmpeg_binary.describe()}" in check.stdout
    inbox = tmp_path / "inbox"  # made by check
    Image.new("RGB", (96, 64), (30, 90, 150)).save(inbox / "cat.png")
    (inbox / "cat.txt").write_text("waves")
    once = run("run", "--once", cwd=tmp_path)
    assert once.returncode == 1, once.stderr[-2000:]
    [out] = (tmp_path / "outputs").glob("cat_*/")
    meta = json.loads((out / f"{out.name}.json").read_text())
    assert meta["recipes"]["late"]["ok"] is False and meta["recipes"]["poster"]["ok"] is True
    assert not list(out.glob("*.late.*"))
