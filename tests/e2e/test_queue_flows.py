"""The queue end to end: the real ``i2vd`` on the shipped config, jobs dropped, the command
run, the result checked on disk (see ``test_user_flows`` for the set-up)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import digest
from test_user_flows import CLI, Lines, drop, env, jobs_in, share, status, wait_for

pytestmark = pytest.mark.slow
__all__ = ["share"]  # the fixture, shared


def start(share: Path, seconds: float, **overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", "--config", str(share / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(I2VD_MODEL__ID=f"stub:{seconds:g}", **overrides),
        cwd=share,
    )


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def started_jobs(lines: Lines) -> list[str]:
    return [str(e.get("job")) for e in list(lines.lines) if e.get("event") == "job started"]


def test_a_folder_with_one_photo_waits_at_most_one_job_behind_a_folder_with_many(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    daemon = start(share, 4)
    stop.append(daemon)
    lines = Lines(daemon)
    inbox = share / "inbox"
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    for i in range(6):
        drop(inbox / "marketing", f"m{i}", seed=i)
    wait_for(lambda: started_jobs(lines), 30, "marketing's first job to start")
    drop(inbox / "sales", "one", seed=9)
    wait_for(lambda: jobs_in(share / "outputs" / "sales"), 60, "sales' job to be filed")
    order = [job.rsplit("_", 2)[0] for job in started_jobs(lines)]
    # Arrival order would put it after all six of marketing's.
    assert "one" in order[:3], order
    assert order[0] == "m0"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    # What was not started is still waiting, untouched, in marketing's folder.
    left = {p.stem for p in (inbox / "marketing").glob("*.png")}
    assert left and left | set(order) >= {f"m{i}" for i in range(6)}
    assert status(share)["state"] == "stopped"


def i2vd(share: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(share / "config.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
        cwd=share,
        check=False,
    )


def me() -> str:
    import os
    import pwd

    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def test_pause_lets_the_job_in_progress_finish_holds_the_rest_across_a_restart_and_resume_goes_on(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    import os
    import stat

    inbox = share / "inbox"
    daemon = start(share, 6)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    drop(inbox, "first")
    second = drop(inbox, "second", seed=1)
    wait_for(lambda: started_jobs(lines), 30, "the first job to start")

    r = i2vd(share, "pause")
    assert r.returncode == 0, r.stderr
    assert "paused since" in r.stdout and f"by {me()}" in r.stdout
    pause_file = share / ".i2vd" / "paused.json"
    st = os.stat(pause_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(share / ".i2vd").st_mode) == 0o700

    # The job in progress finishes; the second is not started.
    wait_for(lambda: jobs_in(share / "outputs"), 60, "the first job to be filed")
    paused = wait_for(lambda: status(share).get("paused"), 10, "status to say paused")
    assert paused["by"] == me() and paused["since"]
    wait_for(lambda: "second" in status(share).get("queue", []), 15, "the second job to be ready")
    text = i2vd(share, "status").stdout
    assert f"paused   since {paused['since']} by {me()}" in text
    page = (share / "outputs" / "index.html").read_text()
    assert "New clips are paused by the operator" in page
    assert [p.name.rsplit("_", 2)[0] for p in jobs_in(share / "outputs")] == ["first"]
    assert started_jobs(lines)[1:] == []

    # A restart keeps the pause.
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    daemon = start(share, 1)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("paused"), 60, "the restarted daemon to say it is paused")
    # The restarted daemon's first status (not the last one's "stopped") already says paused.
    fresh = wait_for(lambda: (s := status(share)).get("state") != "stopped" and s, 60, "a fresh status")
    assert fresh["paused"] == paused
    assert {p.name: digest(p) for p in inbox.glob("second.*")} == second

    r = i2vd(share, "resume")
    assert r.returncode == 0 and "resumed" in r.stdout, r.stderr
    assert not pause_file.exists()
    wait_for(lambda: len(jobs_in(share / "outputs")) == 2, 60, "the second job to be made after resume")
    assert status(share)["paused"] is None
    assert i2vd(share, "resume").stdout.startswith("not paused")


def test_outside_active_hours_jobs_wait_and_status_and_page_say_until_when(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    from datetime import datetime, timedelta

    later = datetime.now() + timedelta(hours=3)
    window = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"
    daemon = start(share, 1, I2VD_QUEUE__ACTIVE_HOURS=window)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    before = drop(share / "inbox", "night")
    wait_for(lambda: "night" in status(share).get("queue", []), 20, "the job to be ready")
    hours = status(share)["active_hours"]
    assert hours["window"] == window and hours["open"] is False
    assert hours["opens_at"].startswith(f"{later:%Y-%m-%dT%H}:00")
    assert f"outside active hours {window}" in i2vd(share, "status").stdout
    assert f"New clips start only between {window}" in (share / "outputs" / "index.html").read_text()
    assert started_jobs(lines) == []
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert {p.name: digest(p) for p in (share / "inbox").glob("night.*")} == before


def failed_job(share: Path, stem: str, rel: str = "") -> Path | None:
    found = [p for p in jobs_in(share / "failed" / rel) if p.name.rsplit("_", 2)[0] == stem]
    return found[0] if found else None


def test_i2vd_cancel_fails_a_waiting_job_and_stops_a_running_one_keeping_their_files(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    inbox = share / "inbox"
    daemon = start(share, 40)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    first = drop(inbox, "first")
    second = drop(inbox / "team", "second", seed=1)
    running = wait_for(lambda: (status(share).get("current") or {}).get("job"), 30, "the first job to start")
    wait_for(lambda: "team/second" in status(share).get("queue", []), 15, "the second job to be ready")

    r = i2vd(share, "cancel", "team/second")
    assert r.returncode == 0, r.stderr
    folder = wait_for(lambda: failed_job(share, "second", "team"), 30, "the waiting job in failed/")
    assert {p.name: digest(p) for p in folder.glob("second.*")} == second
    error = (folder / "error.txt").read_text()
    assert f"cancelled by {me()} (i2vd cancel)" in error and "drag this whole folder back" in error
    assert "fix the problem" not in error, "a cancelled job has nothing to fix"
    assert (folder / f"{folder.name}.log").exists()
    assert str((status(share).get("current") or {}).get("job")) == running, "the running job goes on"

    # The running job, by its JOB name: it stops at its next step, long before its 40 s.
    r = i2vd(share, "cancel", str(running))
    assert r.returncode == 0, r.stderr
    folder = wait_for(lambda: failed_job(share, "first"), 30, "the running job in failed/")
    assert folder.name == running
    assert {p.name: digest(p) for p in folder.glob("first.*")} == first
    error = (folder / "error.txt").read_text()
    assert f"cancelled by {me()} (i2vd cancel)" in error and "fix the problem" not in error
    assert not any(e.get("event") == "frames generated" for e in lines.lines)
    assert jobs_in(share / "done") == [] and not list(inbox.rglob("*.png"))
    assert not list((share / ".i2vd" / "requests").iterdir()), "requests are consumed"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0

    # Made after all, as its error.txt says: the cancelled folder dragged back into the inbox.
    cancelled = failed_job(share, "second", "team")
    assert cancelled is not None
    daemon = start(share, 1)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start again")
    cancelled.rename(inbox / "team" / cancelled.name)
    made = wait_for(lambda: jobs_in(share / "done" / "team"), 60, "the dragged-back job to be made")
    assert {p.name: digest(p) for p in made[0].iterdir()} == second, "only its own files, unchanged"
    assert failed_job(share, "second", "team") is None
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0


def test_a_share_users_cancel_file_cancels_only_its_own_folders_job_and_is_consumed(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    import os

    inbox = share / "inbox"
    daemon = start(share, 40)
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    drop(inbox / "a", "busy")
    ours = drop(inbox / "a", "cat", seed=1)
    theirs = drop(inbox / "b", "cat", seed=2)
    wait_for(lambda: (status(share).get("current") or {}).get("job"), 30, "the first job to start")
    wait_for(lambda: len(status(share).get("queue", [])) == 2, 15, "both cats to be ready")

    (inbox / "b" / "cat.cancel").write_bytes(b"")
    # A link named like a request in a's folder points at b's: never followed, never acted on.
    os.symlink(inbox / "b" / "cat.cancel", inbox / "a" / "busy.cancel")
    folder = wait_for(lambda: failed_job(share, "cat", "b"), 30, "b's cat in failed/")
    assert {p.name: digest(p) for p in folder.glob("cat.*")} == theirs
    assert "cancelled with the file cat.cancel" in (folder / "error.txt").read_text()
    wait_for(lambda: not (inbox / "b" / "cat.cancel").exists(), 10, "the .cancel file to be consumed")
    assert "a/cat" in status(share)["queue"], "a's cat of the same name waits on"
    assert {p.name: digest(p) for p in (inbox / "a").glob("cat.*")} == ours
    assert str(status(share)["current"]["job"]).startswith("busy_"), "the link cancelled nothing"
    assert (inbox / "a" / "busy.cancel").is_symlink()

    # The running job of a's folder, by a's own file.
    (inbox / "a" / "busy.cancel").unlink()
    (inbox / "a" / "busy.cancel").write_text("please")
    folder = wait_for(lambda: failed_job(share, "busy", "a"), 30, "a's running job in failed/")
    assert "cancelled with the file busy.cancel" in (folder / "error.txt").read_text()
    wait_for(lambda: not (inbox / "a" / "busy.cancel").exists(), 10, "the .cancel file to be consumed")
    page = (share / "outputs" / "index.html").read_text()
    assert "cancelled" in page
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0


def test_waiting_jobs_get_positions_and_start_and_ready_times_within_a_fifth_of_what_happens(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    import json
    import time
    from datetime import datetime

    inbox = share / "inbox"
    # A stand-in GPU of known speed, 8 s a clip; only the poster recipe, so that the time an
    # encode takes on a loaded test machine (seconds, and varying) does not blur the figure.
    daemon = start(share, 8, I2VD_OUTPUT__DEFAULT_RECIPES='["poster"]')
    stop.append(daemon)
    lines = Lines(daemon)
    wait_for(lambda: lines.find("watching"), 60, "the daemon to start")
    # Measured: the estimates' history (three, so that the first encode, slower while ffmpeg's
    # files are not cached yet, is not the median).
    for name in ("h0", "h1", "h2"):
        drop(inbox / "warm", name, seed=len(name))
    wait_for(lambda: len(jobs_in(share / "outputs")) == 3, 120, "the first jobs to be filed")
    wait_for(lambda: (share / ".i2vd" / "durations.json").exists(), 10, "its duration to be kept")
    for i in (1, 2, 3):
        drop(inbox, f"w{i}", seed=i)

    def estimated() -> dict | None:
        s = status(share)
        waiting = s.get("waiting") or []
        if s.get("current") and len(waiting) == 2 and all(w["estimated_finish"] for w in waiting):
            return s
        return None

    s = wait_for(estimated, 30, "one job running and two waiting, with estimates")
    asked = time.time()
    assert [(w["job"], w["position"]) for w in s["waiting"]] == [("w2", 1), ("w3", 2)]
    assert s["current"]["ready_in_seconds"] is not None
    assert "(#1, ready ~" in i2vd(share, "status").stdout
    assert "ready about" in (share / "outputs" / "index.html").read_text()
    wait_for(lambda: len(jobs_in(share / "outputs")) == 6, 90, "every job to be filed")

    def timings(stem: str) -> dict:
        [folder] = [p for p in jobs_in(share / "outputs") if p.name.rsplit("_", 2)[0] == stem]
        return json.loads((folder / f"{folder.name}.json").read_text())["timings"]

    def off(estimate: str, actual: str) -> float:
        """How far an estimate was, as a share of how far ahead it looked (at least one job's
        8 s: the record's times are whole seconds, too coarse for a share of less)."""
        est, act = datetime.fromisoformat(estimate).timestamp(), datetime.fromisoformat(actual).timestamp()
        return abs(est - act) / max(act - asked, 8.0)

    for w in s["waiting"]:
        t = timings(w["job"])
        assert off(w["estimated_start"], t["started"]) <= 0.2, (w, t)
        assert off(w["estimated_finish"], t["finished"]) <= 0.2, (w, t)
    # The running job's: within a fifth of its whole run (it may have been nearly done when asked).
    running = timings(s["current"]["job"].rsplit("_", 2)[0])
    ready = asked + s["current"]["ready_in_seconds"]
    finished = datetime.fromisoformat(running["finished"]).timestamp()
    took = finished - datetime.fromisoformat(running["started"]).timestamp()
    assert abs(ready - finished) <= 0.2 * took, (s["current"], running)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0


def test_when_a_folders_last_job_is_filed_a_webhook_and_the_page_say_the_batch_is_done(
    share: Path, stop: list[subprocess.Popen[str]]
) -> None:
    import json

    from tests.listeners.test_webhooks import Receiver

    hook = Receiver().start()
    try:
        inbox = share / "inbox"
        for i in range(3):
            drop(inbox / "team", f"t{i}", seed=i)
        drop(inbox / "team", "bad", prompt="")  # an empty prompt file fails
        drop(inbox, "alone", seed=5)
        urls = json.dumps([hook.url("/batch")])
        daemon = start(share, 1, I2VD_WEBHOOKS__ON_FOLDER_DONE=urls)
        stop.append(daemon)
        wait_for(lambda: len(hook.delivered()) == 2, 120, "a folder_done notice for each folder")
        by_folder = {r["body"]["folder"]: r for r in hook.delivered()}
        team = by_folder["team"]
        assert team["headers"]["x-i2vd-event"] == "folder_done"
        body = team["body"]
        assert (body["event"], body["done"], body["failed"]) == ("folder_done", 3, 1)
        filed = {p.name for p in jobs_in(share / "outputs" / "team")} | {
            p.name for p in jobs_in(share / "failed" / "team")
        }
        assert {body["first_job"], body["last_job"]} <= filed and body["first_job"] != body["last_job"]
        assert (by_folder["."]["body"]["done"], by_folder["."]["body"]["failed"]) == (1, 0)
        line = "Every clip from the folder team is finished: 3 made, 1 could not be made"
        wait_for(lambda: line in (share / "outputs" / "index.html").read_text(), 10, "the page's line")
        assert {b["folder"] for b in status(share)["batches_done"]} == {"team", "."}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    finally:
        hook.close()
