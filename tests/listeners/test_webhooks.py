"""Webhooks against a real local HTTP server: delivery, retries, the spool across restarts."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.config import ConfigError, load_settings
from daemon.job.record import JobRecord
from daemon.listeners.events import JobFinished
from daemon.listeners.webhooks import WebhookSender
from daemon.logs import redact_url

INFO = {"prompt": "a cat walks", "seed": 7, "timings": {"generate_seconds": 3.2}, "name": "café"}


def wait_until(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``check``; the limit only stops a broken test from hanging, nothing is timed."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Receiver:
    """A webhook receiver: answers with ``statuses`` in turn (then 200), records every request.

    Created bound but not listening, so connections are refused until ``start()``: that is
    a receiver that is down, on a port that cannot be taken by anything else meanwhile.
    """

    def __init__(self, statuses: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.entered = threading.Event()
        statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.entered.set()
                if hold is not None:
                    hold.wait(30)
                status = statuses.pop(0) if statuses else 200
                outer.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body),
                        "status": status,
                    }
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def delivered(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if 200 <= r["status"] < 300]

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(receivers: list[Receiver], **kwargs: Any) -> Receiver:
    r = Receiver(**kwargs)
    receivers.append(r)
    return r


def done_event(tmp_path: Path, job: str = "cat_20260101_120000") -> JobFinished:
    return JobFinished(
        job, "done", tmp_path / "outputs" / job, JobRecord.model_validate({**INFO, "job": job}), None
    )


def test_done_and_failed_are_delivered(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = receiver(receivers).start()
    sender = WebhookSender(tmp_path / "spool", on_done=[r.url("/done")], on_failed=[r.url("/failed")])
    try:
        sender.on_job_finished(done_event(tmp_path))
        failed_folder = tmp_path / "failed" / "dog_20260101_120000"
        sender.on_job_finished(
            JobFinished("dog_20260101_120000", "failed", failed_folder, None, "no prompt file")
        )
        wait_until(lambda: len(r.delivered()) == 2 and not sender.pending(), "both deliveries")
    finally:
        sender.close()
    by_path = {req["path"]: req for req in r.requests}
    assert by_path["/done"]["body"] == {**INFO, "job": "cat_20260101_120000"}
    assert by_path["/done"]["headers"]["x-i2vd-event"] == "done"
    assert by_path["/done"]["headers"]["content-type"].startswith("application/json")
    assert by_path["/failed"]["body"] == {
        "event": "failed",
        "job": "dog_20260101_120000",
        "error": "no prompt file",
        "folder": str(failed_folder),
    }
    assert list((tmp_path / "spool").iterdir()) == []


def test_server_errors_are_retried_and_delivered_once(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = receiver(receivers, statuses=[500, 500]).start()
    sender = WebhookSender(tmp_path / "spool", on_done=[r.url()], backoff_seconds=0.01, max_attempts=5)
    try:
        sender.on_job_finished(done_event(tmp_path))
        wait_until(lambda: bool(r.delivered()) and not sender.pending(), "the delivery")
    finally:
        sender.close()
    assert [req["status"] for req in r.requests] == [500, 500, 200]
    assert len(r.delivered()) == 1
    # One delivery id across the retries: a receiver can drop repeats.
    assert len({req["headers"]["x-i2vd-delivery"] for req in r.requests}) == 1
    assert all(req["body"] == r.requests[0]["body"] for req in r.requests)


def test_receiver_down_then_up_after_restart(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = receiver(receivers)  # bound, not listening yet: connections are refused
    spool = tmp_path / "spool"
    sender = WebhookSender(spool, on_done=[r.url()], backoff_seconds=3600, max_attempts=5)

    def attempts() -> int:
        files = list(spool.glob("*.json"))
        return json.loads(files[0].read_text())["attempts"] if files else -1

    sender.on_job_finished(done_event(tmp_path))
    wait_until(lambda: attempts() == 1, "the first failed attempt to be recorded")
    sender.close()
    assert len(sender.pending()) == 1, "an undelivered notice must stay in the spool"

    r.start()
    restarted = WebhookSender(spool, on_done=[r.url()], backoff_seconds=3600, max_attempts=5)
    restarted.on_status({"state": "idle"})  # the service's first status after taking the lock
    try:
        wait_until(lambda: bool(r.delivered()) and not restarted.pending(), "delivery from the spool")
    finally:
        restarted.close()
    assert len(r.delivered()) == 1
    assert r.delivered()[0]["body"]["job"] == "cat_20260101_120000"


def test_given_up_after_max_attempts_with_an_error(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = receiver(receivers, statuses=[503] * 10).start()
    sender = WebhookSender(tmp_path / "spool", on_done=[r.url()], backoff_seconds=0.01, max_attempts=3)
    try:
        with capture_logs() as logged:
            sender.on_job_finished(done_event(tmp_path))
            wait_until(lambda: len(r.requests) == 3 and not sender.pending(), "three attempts")
            wait_until(lambda: any(e["log_level"] == "error" for e in logged), "the error line")
    finally:
        sender.close()
    assert len(r.requests) == 3
    errors = [e for e in logged if e["log_level"] == "error"]
    assert errors[0]["job"] == "cat_20260101_120000" and "503" in errors[0]["error"]


def test_hung_receiver_never_blocks_the_loop(tmp_path: Path, receivers: list[Receiver]) -> None:
    release = threading.Event()
    r = receiver(receivers, hold=release).start()
    spool = tmp_path / "spool"
    sender = WebhookSender(spool, on_done=[r.url()], timeout=60)
    try:
        sender.on_job_finished(done_event(tmp_path, "first"))
        assert r.entered.wait(30), "the receiver never got the first POST"
        # The receiver now holds the sender's only thread; the loop must still get through.
        sender.on_job_finished(done_event(tmp_path, "second"))
        sender.on_job_finished(done_event(tmp_path, "third"))
        assert not release.is_set() and r.requests == []
        assert len(sender.pending()) == 3
        sender.close(timeout=0.1)  # bounded even while the POST hangs
    finally:
        release.set()
    sender._thread.join(30)
    assert not sender._thread.is_alive()
    # The POST in flight completed; the two never sent wait in the spool for the next start.
    assert [req["body"]["job"] for req in r.delivered()] == ["first"]
    assert len(sender.pending()) == 2


def test_config_validates_urls_and_sender_is_optional(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[webhooks]\non_done = ["ftp://example.org/x"]\n')
    with pytest.raises(ConfigError, match=r"webhooks\.on_done"):
        load_settings(cfg)
    cfg.write_text("[paths]\ninbox = 'inbox'\n")
    settings = load_settings(cfg)
    assert WebhookSender.from_settings(settings) is None  # nothing configured, nothing spooled
    cfg.write_text('[webhooks]\non_failed = ["http://127.0.0.1:9/x"]\nmax_attempts = 2\n')
    sender = WebhookSender.from_settings(load_settings(cfg))
    assert sender is not None
    try:
        assert sender.max_attempts == 2 and sender.spool == load_settings(cfg).state_dir / "webhooks"
    finally:
        sender.close()


# -- the spool read back as a stranger's, credentials kept out of the log ----------------------------


def spool_one(spool: Path, url: str, event: str = "done") -> None:
    """A spooled delivery as the sender writes it, to ``url``."""
    spool.mkdir(parents=True, exist_ok=True)
    job = "cat_20260101_120000"
    record = {"id": "f" * 32, "url": url, "event": event, "job": job, "attempts": 0, "payload": {"job": job}}
    (spool / f"{time.time_ns():020d}-ffffffff.json").write_text(json.dumps(record))


def test_a_spooled_webhook_goes_only_to_a_url_configured_now_for_its_event(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    stranger, configured = receiver(receivers).start(), receiver(receivers).start()
    spool = tmp_path / "spool"
    spool_one(spool, stranger.url("/steal"))
    spool_one(spool, configured.url("/failed-only"), event="done")  # configured, for the other event
    spool_one(spool, configured.url("/done"))
    sender = WebhookSender(
        spool, on_done=[configured.url("/done")], on_failed=[configured.url("/failed-only")]
    )
    try:
        with capture_logs() as logged:
            sender.start()
            wait_until(lambda: not sender.pending(), "the spool to be worked through")
    finally:
        sender.close()
    assert stranger.requests == []
    assert [r["path"] for r in configured.requests] == ["/done"]
    dropped = sorted(e["url"] for e in logged if e["event"].startswith("webhook not sent"))
    assert dropped == sorted(f"http://127.0.0.1:{r.port}/…" for r in (stranger, configured))
    assert list(spool.iterdir()) == []


def test_spool_files_are_private(tmp_path: Path, receivers: list[Receiver]) -> None:
    down = receiver(receivers)  # bound, not listening: the delivery stays spooled
    spool = tmp_path / "spool"
    old = os.umask(0o002)  # the service's UMask
    try:
        sender = WebhookSender(spool, on_done=[down.url()], backoff_seconds=3600)
        sender.on_job_finished(done_event(tmp_path))
        wait_until(lambda: json.loads(next(spool.glob("*.json")).read_text())["attempts"] == 1, "one try")
        sender.close()
    finally:
        os.umask(old)
    assert spool.stat().st_mode & 0o777 == 0o700
    assert [p.stat().st_mode & 0o777 for p in spool.iterdir()] == [0o600]


def test_webhook_credentials_never_reach_the_log(tmp_path: Path, receivers: list[Receiver]) -> None:
    r = receiver(receivers, statuses=[500, 500, 500]).start()
    url = f"http://alice:pw-SECRET1@127.0.0.1:{r.port}/hook/SECRET2?token=SECRET3"
    sender = WebhookSender(tmp_path / "spool", on_done=[url], backoff_seconds=0.01, max_attempts=3)
    try:
        with capture_logs() as logged:
            sender.on_job_finished(done_event(tmp_path))
            wait_until(lambda: len(r.requests) == 3 and not sender.pending(), "three tries")
            wait_until(lambda: any(e["log_level"] == "error" for e in logged), "the error line")
    finally:
        sender.close()
    assert "SECRET" not in json.dumps(logged, default=str)
    assert {e["url"] for e in logged if "url" in e} == {f"http://127.0.0.1:{r.port}/…"}
    # The credentials went where they belong: to the receiver, as basic authentication and the URL.
    assert r.requests[0]["path"] == "/hook/SECRET2?token=SECRET3"
    basic = "Basic " + base64.b64encode(b"alice:pw-SECRET1").decode()
    assert r.requests[0]["headers"]["authorization"] == basic


def test_redact_url_and_config_errors_hide_what_follows_the_host(tmp_path: Path) -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/SECRET") == "https://hooks.slack.com/…"
    assert redact_url("http://u:SECRET@h:8080/?sig=SECRET") == "http://h:8080/…"
    assert redact_url("http://h:8080") == "http://h:8080"
    config = tmp_path / "config.toml"
    config.write_text('[webhooks]\non_done = ["ftp://u:SECRET@example.org/x?token=SECRET"]\n')
    with pytest.raises(ConfigError) as bad:
        load_settings(config)
    assert "webhooks.on_done" in str(bad.value) and "SECRET" not in str(bad.value)
