"""Optional webhooks (``[webhooks]``): POST a JSON notice when a job is done or has failed.

Deliveries are at least once. Each one (one event to one URL) is first written as a file
under ``STATE/webhooks/``, and that file is removed only when the receiver answered 2xx, or
after ``max_attempts`` tries (then the log says so as an error). A receiver that is down,
or a daemon restarted meanwhile, therefore loses nothing: the files are sent again on the
next start. A receiver that wants exactly once can drop repeats of ``X-I2VD-Delivery``.

The spool is read back as if a stranger wrote it: a notice is POSTed only to a URL the
configuration lists now for that event, so a file placed in the spool can never make the
daemon send anything anywhere else. Spool files are private (0600): URLs carry credentials,
which is also why a URL is logged only as ``logs.redact_url`` shows it.

The POSTs happen in one background thread with exponential back-off, so a slow or hung
receiver never holds up the generation loop; memory stays bounded because the queue in
memory holds only file names, the notices themselves wait on disk.

When the spool cannot be written (a full disk, which share users can cause) a notice is kept in
memory instead, at most ``HELD_MAX`` of them, sent all the same, and written to the spool when
it fails and is to be retried; only a restart before it is delivered loses it.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import __version__, logs
from daemon.folders import fsops, trust
from daemon.listeners.events import FolderDone, JobFinished
from daemon.logs import redact_url
from daemon.states import Outcome

if TYPE_CHECKING:
    from daemon.config import Settings

# However large backoff_seconds * 2**n grows, a receiver that comes back is retried within this.
MAX_BACKOFF = 3600.0
# Read at most this much of a receiver's answer (we only need its status).
_MAX_ANSWER = 64 * 1024
# Notices kept in memory while the spool cannot be written; beyond, the oldest is dropped.
HELD_MAX = 1000
# A spooled notice holds one JOB.json; one far larger is not the daemon's.
_MAX_SPOOLED = 8 * 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as a failure: urllib would turn the POST into a GET and drop the body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """Delivers job notices to the configured URLs from its own thread (see ``start``).

    Pending deliveries found in ``spool`` (left by an earlier run) are sent first, to the URL
    each was made for, if the configuration still lists it for that event; the others are
    dropped, saying so: only the configuration decides where notices go.
    """

    def __init__(
        self,
        spool: Path,
        *,
        on_done: Sequence[str] = (),
        on_failed: Sequence[str] = (),
        on_folder_done: Sequence[str] = (),
        timeout: float = 10.0,
        max_attempts: int = 10,
        backoff_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.on_done = list(on_done)
        self.on_failed = list(on_failed)
        self.on_folder_done = list(on_folder_done)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._clock = clock
        self._log = logs.get()
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._cond = threading.Condition()
        self._heap: list[tuple[float, str]] = []  # (due time, spool file name)
        self._held: dict[str, dict[str, Any]] = {}  # spool file name -> notice not written there
        self._trouble = logs.Recurring("the webhook spool", spool=str(spool))
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="i2vd-webhooks", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSender | None:
        """A sender for ``settings.webhooks``; None when no URL is configured and nothing is spooled."""
        cfg = settings.webhooks
        spool = settings.state_dir / "webhooks"
        urls = cfg.on_done or cfg.on_failed or cfg.on_folder_done
        if not urls and not any(spool.glob("*.json")):
            return None
        return cls(
            spool,
            on_done=cfg.on_done,
            on_failed=cfg.on_failed,
            on_folder_done=cfg.on_folder_done,
            timeout=cfg.timeout,
            max_attempts=cfg.max_attempts,
            backoff_seconds=cfg.backoff_seconds,
        )

    def start(self) -> None:
        """Start sending (what is spooled first); idempotent, and implied by the first event.

        Starting on the first event rather than in the constructor matters: the service
        sends events only once it holds the folders' lock, so a second daemon started on
        the same folders (and refused by the lock) never touches the first one's spool.
        """
        with self._cond:
            if self._thread.ident is not None or self._stop:
                return
            try:
                self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                self._trouble.failed(e)  # a full disk: notices are held in memory (``_keep``)
            for stale in self.spool.glob(".*.tmp"):
                stale.unlink(missing_ok=True)  # a write_json_atomic cut short by a crash
            now = self._clock()
            # File names begin with the creation time, so sorting resends in the original order.
            for path in sorted(self.spool.glob("*.json")):
                heapq.heappush(self._heap, (now, path.name))
            if self._heap:
                self._log.info("resending spooled webhooks", count=len(self._heap), spool=str(self.spool))
            self._thread.start()

    # -- Listener ------------------------------------------------------------------------

    def on_status(self, status: dict[str, Any]) -> None:
        """Webhooks are about finished jobs only; the first status starts the sender."""
        self.start()

    def on_job_finished(self, event: JobFinished) -> None:
        """Spool one delivery per URL and wake the sender thread; never waits for a receiver.

        The spool file is written here, on the thread that filed the job, and not by the
        sender: once this returns the notice survives a crash. It is one small write, like
        the JOB.json written just before.
        """
        self.start()
        if event.outcome == Outcome.DONE:
            urls, payload = self.on_done, (event.record.to_json() if event.record else {"job": event.job})
        else:
            urls = self.on_failed
            payload = {"event": "failed", "job": event.job, "error": event.error, "folder": str(event.folder)}
        self._spool(urls, event.outcome, event.job, payload)

    def on_folder_finished(self, event: FolderDone) -> None:
        """A folder's last waiting job was filed: one notice per ``on_folder_done`` URL."""
        self.start()
        self._spool(self.on_folder_done, "folder_done", event.last_job, event.to_json())

    def _spool(self, urls: Sequence[str], kind: str, job: str, payload: Any) -> None:
        for url in urls:
            record = {
                "id": uuid.uuid4().hex,
                "url": url,
                "event": kind,
                "job": job,
                "attempts": 0,
                "created_at": time.time(),
                "payload": payload,
            }
            name = f"{time.time_ns():020d}-{record['id'][:8]}.json"
            self._keep(name, record)
            self._schedule(name, 0.0)

    def _keep(self, name: str, record: dict[str, Any]) -> None:
        """Write a notice to the spool; when that fails, hold it in memory (bounded) instead."""
        try:
            fsops.write_json_atomic(self.spool / name, record, private=True)
        except OSError as e:
            self._trouble.failed(e)
            with self._cond:
                self._held[name] = record
                while len(self._held) > HELD_MAX:
                    old = next(iter(self._held))
                    dropped = self._held.pop(old)
                    self._log.error(
                        "webhook dropped: the spool cannot be written and too many wait in memory",
                        job=dropped.get("job"),
                        url=redact_url(str(dropped.get("url"))),
                    )
        else:
            self._trouble.ok()
            with self._cond:
                self._held.pop(name, None)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread; a POST in flight may take up to ``self.timeout`` to give up.

        Deliveries not yet made stay in the spool and are sent on the next start.
        """
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.ident is None:
            return
        self._thread.join(self.timeout + 2 if timeout is None else timeout)
        if self._thread.is_alive():
            self._log.warning(
                "webhook sender still busy at stop; what it was sending is resent on next start"
            )

    # -- the sender thread ---------------------------------------------------------------

    def pending(self) -> list[str]:
        """Spool file names not yet delivered, also those held in memory (for status and tests)."""
        spooled = {p.name for p in self.spool.glob("*.json")} if self.spool.is_dir() else set()
        with self._cond:
            return sorted(spooled | set(self._held))

    def _schedule(self, name: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (self._clock() + delay, name))
            self._cond.notify()

    def _next(self) -> str | None:
        with self._cond:
            while not self._stop:
                if self._heap:
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        return heapq.heappop(self._heap)[1]
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (name := self._next()) is not None:
            try:
                self._deliver(name)
            except Exception:  # keep the thread alive whatever one delivery does
                self._log.exception("webhook delivery crashed", spool_file=name)

    def _deliver(self, name: str) -> None:
        path = self.spool / name
        with self._cond:
            held = self._held.get(name)
        try:
            record = held if held is not None else json.loads(trust.read_regular(path, _MAX_SPOOLED))
            url, event, payload = record["url"], record["event"], record["payload"]
            tried = int(record.get("attempts", 0))
            if not isinstance(url, str) or event not in self._urls:
                raise ValueError("url or event is not one the daemon writes")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Not ours or damaged beyond use: set aside for a look, never retried in a loop.
            path.rename(path.with_name(name + ".bad"))
            self._log.error("unreadable webhook spool file set aside", file=str(path) + ".bad", error=str(e))
            return
        job = record.get("job")
        if url not in self._urls[event]:
            path.unlink(missing_ok=True)
            with self._cond:
                self._held.pop(name, None)
            self._log.warning(
                f"webhook not sent: [webhooks] on_{event} no longer lists its URL",
                job=job,
                url=redact_url(url),
            )
            return
        error = self._post(url, event, str(record.get("id", name)), payload)
        if error is None or tried + 1 >= self.max_attempts:
            with self._cond:
                self._held.pop(name, None)
        if error is None:
            path.unlink(missing_ok=True)
            self._log.info("webhook delivered", job=job, url=redact_url(url), webhook_event=event)
            return
        error = _scrub(error, url)
        attempts = tried + 1
        if attempts >= self.max_attempts:
            path.unlink(missing_ok=True)
            self._log.error(
                "webhook dropped after repeated failures",
                job=job,
                url=redact_url(url),
                webhook_event=event,
                attempts=attempts,
                error=error,
            )
            return
        record["attempts"] = attempts
        record["last_error"] = error
        # The count is kept on disk so that restarts cannot retry a dead receiver forever.
        self._keep(name, record)
        delay = min(self.backoff_seconds * 2 ** (attempts - 1), MAX_BACKOFF)
        self._log.warning(
            "webhook failed; will retry",
            job=job,
            url=redact_url(url),
            attempts=attempts,
            retry_in=delay,
            error=error,
        )
        self._schedule(name, delay)

    @property
    def _urls(self) -> dict[str, list[str]]:
        return {"done": self.on_done, "failed": self.on_failed, "folder_done": self.on_folder_done}

    def _post(self, url: str, event: str, delivery: str, payload: Any) -> str | None:
        """POST ``payload``; None on a 2xx answer, else what went wrong."""
        body = json.dumps(payload, ensure_ascii=False, default=str).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"i2vd/{__version__}",
            "X-I2VD-Event": event,
            "X-I2VD-Delivery": delivery,
        }
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc:
            # urllib cannot send user:password@ itself: it becomes HTTP basic authentication.
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        try:
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        except ValueError as e:
            return str(e)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                answer.read(_MAX_ANSWER)
                status = int(answer.status)
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            return str(getattr(e, "reason", None) or e)
        return None if 200 <= status < 300 else f"HTTP {status}"


def _scrub(error: str, url: str) -> str:
    """An error message with any part of ``url`` that may carry a credential cut out."""
    parts = urllib.parse.urlsplit(url)
    secrets = [url, parts.netloc.rpartition("@")[0], parts.path, parts.query, parts.fragment]
    for secret in sorted((x for x in secrets if len(x) > 1), key=len, reverse=True):
        error = error.replace(secret, "…")
    return error
