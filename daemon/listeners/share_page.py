"""``outputs/index.html``: a status page for the people on the share, opened straight from it.

The page is one self-contained HTML file (inline CSS, no script, no external assets), so it
works over ``file://`` from a Samba or NFS share in any browser, and a ``<meta refresh>``
keeps it current. Every link is relative to ``outputs/``, so the page works wherever the
share is mounted. Everything users control (prompts, file and folder names, error text)
is HTML-escaped, and every href/src is percent-encoded path segment by path segment:
names may hold spaces, quotes, ``#``, ``:`` or ``<script>``.

``SharePage`` is a ``daemon.listeners.events.Listener``. It keeps the last ``keep`` finished and
failed jobs in memory (seeded once at start from the newest job folders on disk, found by
the timestamp in their names, so a share with thousands of old jobs costs one directory
walk and ``keep`` small reads, once) and rewrites the page atomically: on every finished
job, on a change of state or current job, and otherwise at most every ``min_interval``
seconds, so per-step progress ticks do not turn into a file write each.
"""

from __future__ import annotations

import contextlib
import heapq
import html
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from daemon import logs
from daemon.folders import fsops, names
from daemon.folders.names import ERROR_FILE
from daemon.job.record import JobRecord
from daemon.listeners.events import JobFinished

PAGE = "index.html"
REFRESH_SECONDS = 10
# Bounds that keep one render small whatever lands on the share.
QUEUE_SHOWN = 50
MAX_PROMPT = 2000
MAX_ERROR = 4000
MAX_FILES = 20
MAX_DEPTH = 8  # subfolders of the inbox mirrored under outputs/; deeper is surely not ours
# Re-logging the same failure every render would flood journald when the share is full.
ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Output:
    """One recipe's outcome, as listed under ``recipes`` in JOB.json."""

    recipe: str
    file: str | None
    error: str | None = None


@dataclass(frozen=True)
class Entry:
    """What the page shows about one finished or failed job."""

    job: str
    outcome: str  # "done" or "failed"
    link: str  # the job's folder relative to outputs/ (POSIX, not yet URL-quoted)
    when: datetime | None  # when it finished or failed
    prompt: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    master: str | None = None  # file name of the master clip inside the folder
    poster: str | None = None  # file name of the poster frame, only when it exists on disk
    outputs: tuple[Output, ...] = ()
    error: str | None = None  # failed: the text of error.txt
    files: tuple[str, ...] = ()  # failed: the user's own files kept beside error.txt


# -- building entries from what is on disk ------------------------------------------------


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(folder: Path, outputs: Path) -> str:
    """The folder as seen from ``outputs/index.html`` (``../failed/...`` for failed jobs)."""
    try:
        return Path(os.path.relpath(os.path.abspath(folder), os.path.abspath(outputs))).as_posix()
    except ValueError:  # another drive (only possible on Windows): no relative link exists
        return folder.name


def _parse_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None


def done_entry(folder: Path, outputs: Path, record: JobRecord) -> Entry:
    job = record.job or folder.name
    outs = tuple(
        Output(str(name), r.file if r.ok else None, None if r.ok else r.error)
        for name, r in record.recipes.items()
    )
    # The poster recipe may be renamed or dropped by the operator; link only a file that is there.
    candidates = [o.file for o in outs if o.recipe == "poster" and o.file] + [f"{job}.poster.png"]
    poster = next((c for c in candidates if (folder / c).is_file()), None)
    return Entry(
        job=job,
        outcome="done",
        link=_link(folder, outputs),
        when=_parse_time(record.timings.finished),
        prompt=_clip(record.prompt, MAX_PROMPT),
        parameters=record.parameters.model_dump(exclude_none=True),
        master=record.master,
        poster=poster,
        outputs=outs,
    )


def failed_entry(folder: Path, outputs: Path, error: str | None, when: datetime | None = None) -> Entry:
    files: list[str] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name != ERROR_FILE and not e.name.startswith(".") and not e.name.endswith(".log"):
                    files.append(e.name)
                    if len(files) >= MAX_FILES:
                        break
    except OSError:
        pass
    if error is None:
        try:
            error = (folder / ERROR_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            error = None
    if when is None:
        try:
            when = datetime.fromtimestamp((folder / ERROR_FILE).stat().st_mtime).astimezone()
        except OSError:
            when = None
    return Entry(
        job=folder.name,
        outcome="failed",
        link=_link(folder, outputs),
        when=when,
        error=_clip(error, MAX_ERROR) or "No explanation was recorded.",
        files=tuple(sorted(files)),
    )


def entry_from_event(event: JobFinished, outputs: Path) -> Entry:
    if event.outcome == "done":
        record = event.record if event.record is not None else JobRecord.read(event.folder)
        return done_entry(event.folder, outputs, record)
    return failed_entry(event.folder, outputs, event.error, datetime.now().astimezone())


def _job_folders(root: Path, depth: int = 0) -> Iterator[tuple[tuple[str, str, int], Path]]:
    """Every folder under ``root`` named like a JOB, with a sort key from the name's timestamp.

    The name alone says how new a job is, so no file is opened or stat'ed here; a folder
    named like a job is not descended into (its own files are no subfolders of ours).
    """
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError:
        return
    for e in entries:
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        key = names.job_time(e.name)
        if key is not None:
            yield key, Path(e.path)
        elif depth < MAX_DEPTH:
            yield from _job_folders(Path(e.path), depth + 1)


def load_recent(outputs: Path, failed: Path, keep: int) -> list[Entry]:
    """The newest ``keep`` jobs on disk, oldest first; reads at most ``keep`` small files."""
    found = [(key, path, "done") for key, path in _job_folders(outputs)]
    found += [(key, path, "failed") for key, path in _job_folders(failed)]
    newest = heapq.nlargest(keep, found, key=lambda t: t[0])
    entries: list[tuple[tuple[str, str, int], Entry]] = []
    for key, path, outcome in newest:
        try:
            if outcome == "done":
                entry = done_entry(path, outputs, JobRecord.read(path))
            elif (path / ERROR_FILE).is_file():
                entry = failed_entry(path, outputs, None)
            else:
                continue
        except (OSError, ValueError):
            continue  # not a job folder after all, or one being written: skip it
        entries.append((key, entry))
    # Finish time orders them as they happened; the start time in the name breaks ties.
    entries.sort(key=lambda ke: (ke[1].when.timestamp() if ke[1].when else 0.0, ke[0]))
    return [e for _, e in entries]


# -- rendering ------------------------------------------------------------------------------


def _t(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(*parts: str) -> str:
    """A relative URL for a path under outputs/: each segment percent-encoded, then attribute-escaped.

    ``quote`` with only ``/`` safe also encodes ``:`` (so no name can become a
    ``javascript:`` URL), ``#`` and ``?`` (which would cut the path short) and backslashes
    (which Windows browsers would read as separators).
    """
    path = "/".join(p.strip("/") for p in parts if p and p != ".")
    return _t(quote(path, safe="/"))


def _eta(seconds: object) -> str | None:
    try:
        s = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(s) or s < 0:
        return None
    if s < 60:
        return f"about {max(1, round(s))} s left"
    minutes = math.ceil(s / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60} min left"


def _when(d: datetime | None) -> str:
    return f"{d.day} {d:%b %Y, %H:%M}" if d else ""


def _ext(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.upper() if dot else "file"


def _params(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if p.get("width") and p.get("height"):
        out.append(("Size", f"{p['width']} × {p['height']}"))
    if p.get("num_frames") is not None:
        out.append(("Frames", str(p["num_frames"])))
    if p.get("fps"):
        out.append(("Speed", f"{p['fps']} fps"))
        with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
            out.append(("Length", f"{float(p['num_frames']) / float(p['fps']):.1f} s"))
    if p.get("steps") is not None:
        out.append(("Steps", str(p["steps"])))
    if p.get("seed") is not None:
        out.append(("Seed", str(p["seed"])))
    return out


_STATE_TEXT = {
    "busy": ("busy", "Working"),
    "idle": ("idle", "Ready: waiting for new files in the inbox"),
    "stopped": (
        "stopped",
        "Stopped: the video service is not running. Files dropped into the inbox "
        "wait there until it is started again",
    ),
}

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;
color:#1d2430;background:#f3f5f8}
main{max-width:1200px;margin:0 auto;padding:24px 20px 40px}
h1{font-size:28px;margin:0 0 4px}
h2{font-size:20px;margin:32px 0 12px}
.muted{color:#5d6778}
.small{font-size:14px}
.state{display:inline-block;padding:2px 10px;border-radius:999px;font-weight:600;font-size:14px;
background:#e4e8ee;color:#3a4352}
.state.busy{background:#dbeafe;color:#1e4fa8}.state.idle{background:#dcf2e3;color:#1d6b3a}
.state.stopped{background:#fde2e1;color:#a12622}
.box{background:#fff;border:1px solid #dde2ea;border-radius:10px;padding:16px 18px}
.now .name{font-size:18px;font-weight:600;word-break:break-word}
.bar{height:14px;background:#e4e8ee;border-radius:7px;overflow:hidden;margin:10px 0 6px}
.bar>span{display:block;height:100%;background:#2f6fdb}
ol.queue{list-style:none;margin:0;padding:0}
ol.queue li{display:flex;gap:12px;padding:6px 0;border-top:1px solid #eef1f5;word-break:break-word}
ol.queue li:first-child{border-top:0}
.pos{min-width:2.2em;text-align:right;font-weight:600;color:#5d6778}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:10px;overflow:hidden;display:flex;
flex-direction:column}
.card .thumb{display:flex;align-items:center;justify-content:center;height:220px;background:#1d2430}
.card .thumb img{max-width:100%;max-height:220px;object-fit:contain}
.card .thumb .none{color:#aeb6c4;font-size:14px}
.card .body{padding:12px 14px 14px}
.card h3{font-size:16px;margin:0 0 2px;word-break:break-word}
.prompt{margin:8px 0;padding:8px 10px;background:#f3f5f8;border-radius:6px;white-space:pre-wrap;
word-break:break-word}
dl.params{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0}
dl.params div{background:#eef1f5;border-radius:6px;padding:1px 8px;font-size:14px}
dl.params dt{display:inline;color:#5d6778}dl.params dt::after{content:" "}
dl.params dd{display:inline;margin:0;font-weight:600}
.links{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.links a{display:inline-block;padding:4px 10px;border:1px solid #c9d3e3;border-radius:6px;
text-decoration:none;color:#1e4fa8;font-size:14px;background:#f7f9fc}
.links a.main{background:#2f6fdb;border-color:#2f6fdb;color:#fff;font-weight:600}
.warn{color:#9a5b00;font-size:14px;margin-top:6px;word-break:break-word}
.card.failed{border-color:#f0c4c2}
.card.failed .body{border-top:4px solid #d9534f}
.error{margin:8px 0;padding:8px 10px;background:#fdf0ef;border-radius:6px;white-space:pre-wrap;
word-break:break-word}
a{color:#1e4fa8}
footer{margin-top:36px;font-size:14px;color:#5d6778}
"""


def _now_box(status: Mapping[str, Any]) -> str:
    """The job being made, with its progress; one box per job when several workers make clips."""
    running = status.get("running")
    if isinstance(running, Sequence) and not isinstance(running, str) and len(running) > 1:
        hosts = {w.get("name"): w.get("host") for w in status.get("workers") or [] if isinstance(w, Mapping)}
        boxes = []
        for run in running:
            if isinstance(run, Mapping) and run.get("job"):
                boxes.append(_one_now_box(run, where=hosts.get(run.get("worker"))))
        if boxes:
            return "".join(boxes)
    return _one_now_box(status.get("current"), status.get("state"))


def _one_now_box(cur: Any, state: Any = None, where: Any = None) -> str:
    if not isinstance(cur, Mapping) or not cur.get("job"):
        if state == "stopped":
            text = "Nothing: the video service is stopped."
        else:
            text = "Nothing is being made right now."
        return f'<div class="box now"><span class="muted">{_t(text)}</span></div>'
    step: Any = cur.get("step") or 0
    total: Any = cur.get("total")
    parts = [f'<div class="box now"><div class="name">{_t(cur["job"])}</div>']
    try:
        fraction = min(1.0, max(0.0, float(step) / float(total)))
    except (TypeError, ValueError, ZeroDivisionError):
        fraction = None
    if fraction is None:
        parts.append('<div class="bar"><span style="width:0%"></span></div>')
        parts.append('<div class="muted">Getting ready…</div>')
    else:
        pct = round(fraction * 100)
        eta = _eta(cur.get("eta_seconds"))
        parts.append(f'<div class="bar"><span style="width:{pct}%"></span></div>')
        line = f"Step {_t(step)} of {_t(total)} ({pct}%)" + (f" · {_t(eta)}" if eta else "")
        parts.append(f'<div class="progress">{line}</div>')
    if where:
        parts.append(f'<div class="muted small">on {_t(where)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _queue_box(status: Mapping[str, Any]) -> tuple[int, str]:
    raw = status.get("queue")
    queue = [str(q) for q in raw] if isinstance(raw, Sequence) and not isinstance(raw, str) else []
    try:
        total = max(int(status.get("queue_length", len(queue))), len(queue))
    except (TypeError, ValueError):
        total = len(queue)
    arriving = _arriving(status)
    if not total:
        if arriving:
            return 0, f'<div class="box">{arriving}</div>'
        return 0, '<div class="box"><span class="muted">No files are waiting.</span></div>'
    items = []
    for pos, name in enumerate(queue[:QUEUE_SHOWN], 1):
        folder, _, stem = name.rpartition("/")
        where = f' <span class="muted small">in {_t(folder)}</span>' if folder and folder != "." else ""
        items.append(f'<li><span class="pos">{pos}</span><span>{_t(stem)}{where}</span></li>')
    more = total - min(len(queue), QUEUE_SHOWN)
    tail = f'<p class="muted small">… and {more} more waiting.</p>' if more > 0 else ""
    return total, f'<div class="box"><ol class="queue">{"".join(items)}</ol>{tail}{arriving}</div>'


def _arriving(status: Mapping[str, Any]) -> str:
    """Files seen in the inbox that are not ready yet: still being copied, or missing their partner."""
    raw = status.get("arriving")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        return ""
    items = []
    for entry in list(raw)[:QUEUE_SHOWN]:
        if isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
            items.append(f'<li>{_t(entry[0])} <span class="muted small">{_t(entry[1])}</span></li>')
    if not items:
        return ""
    return f'<p class="muted small">Noticed, not ready yet:</p><ul class="arriving">{"".join(items)}</ul>'


def _done_card(e: Entry) -> str:
    master = _href(e.link, e.master) if e.master else None
    if e.poster:
        img = f'<img src="{_href(e.link, e.poster)}" alt="First frame of {_t(e.job)}">'
        thumb = f'<a class="thumb" href="{master}">{img}</a>' if master else f'<div class="thumb">{img}</div>'
    else:
        thumb = '<div class="thumb"><span class="none">no preview picture</span></div>'
    body = [f"<h3>{_t(e.job)}</h3>"]
    if e.when:
        body.append(f'<div class="muted small">Finished {_t(_when(e.when))}</div>')
    if e.prompt:
        body.append(f'<div class="prompt">{_t(e.prompt)}</div>')
    params = _params(e.parameters)
    if params:
        chips = "".join(f"<div><dt>{_t(k)}</dt><dd>{_t(v)}</dd></div>" for k, v in params)
        body.append(f'<dl class="params">{chips}</dl>')
    links = []
    if master and e.master:
        links.append(f'<a class="main" href="{master}">Video ({_t(_ext(e.master))})</a>')
    for o in e.outputs:
        if o.file:
            links.append(
                f'<a href="{_href(e.link, o.file)}" title="{_t(o.file)}">{_t(o.recipe)} '
                f"({_t(_ext(o.file))})</a>"
            )
    links.append(f'<a href="{_href(e.link)}/">All files</a>')
    body.append(f'<div class="links">{"".join(links)}</div>')
    for o in e.outputs:
        if not o.file:
            body.append(
                f'<div class="warn">The “{_t(o.recipe)}” version could not be made: '
                f"{_t(o.error or 'unknown error')}</div>"
            )
    return f'<div class="card done">{thumb}<div class="body">{"".join(body)}</div></div>'


def _failed_card(e: Entry) -> str:
    body = [f"<h3>{_t(e.job)}</h3>"]
    if e.when:
        body.append(f'<div class="muted small">Failed {_t(_when(e.when))}</div>')
    body.append(f'<div class="error">{_t(e.error or "")}</div>')
    links = [f'<a href="{_href(e.link, ERROR_FILE)}">Explanation (error.txt)</a>']
    links += [f'<a href="{_href(e.link, f)}">{_t(f)}</a>' for f in e.files]
    body.append(
        f'<div class="muted small">Your files were set aside here:</div><div class="links">'
        f"{''.join(links)}</div>"
    )
    return f'<div class="card failed"><div class="body">{"".join(body)}</div></div>'


def render(
    status: Mapping[str, Any],
    finished: Sequence[Entry],
    *,
    now: datetime | None = None,
    refresh: int = REFRESH_SECONDS,
) -> str:
    """The whole page for ``status`` (as published to status.json) and ``finished`` (newest first)."""
    now = now or datetime.now().astimezone()
    state = str(status.get("state") or "unknown")
    css_class, state_text = _STATE_TEXT.get(state, ("unknown", "Status unknown"))
    queued, queue_html = _queue_box(status)
    done = [e for e in finished if e.outcome == "done"]
    failed = [e for e in finished if e.outcome != "done"]
    model = status.get("model")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Video clips</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Video clips</h1>",
        f'<p><span class="state {css_class}">{_t(state_text)}</span> '
        f'<span class="muted small">Updated {_t(_when(now))}:{now:%S} · this page refreshes itself '
        f"every {int(refresh)} seconds</span></p>",
        "<h2>Being made now</h2>",
        _now_box(status),
        f"<h2>Waiting ({queued})</h2>",
        queue_html,
        f"<h2>Finished clips ({len(done)})</h2>",
    ]
    if done:
        out.append(f'<div class="grid">{"".join(_done_card(e) for e in done)}</div>')
    else:
        out.append('<div class="box"><span class="muted">No finished clips yet.</span></div>')
    if failed:
        out.append(f"<h2>Could not be made ({len(failed)})</h2>")
        out.append(f'<div class="grid">{"".join(_failed_card(e) for e in failed)}</div>')
    out.append(
        "<footer>To make a clip, drop an image and a text file with the same name holding the prompt "
        "(for example <b>cat.jpg</b> and <b>cat.txt</b>) into the inbox folder. "
        "To try a failed clip again, fix what its error.txt says, then drag its whole folder from "
        "<b>failed</b> back into the inbox folder it came from. "
        f"The newest {len(finished) or 'few'} results are listed here; older ones stay in their folders."
        + (f" Model: {_t(model)}." if model else "")
        + "</footer></main></body></html>\n"
    )
    return "\n".join(out)


# -- the listener ---------------------------------------------------------------------------


class SharePage:
    """Keeps ``outputs/index.html`` current; see the module docstring for when it writes."""

    def __init__(
        self,
        outputs: Path,
        failed: Path,
        *,
        keep: int = 50,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 2.0,
    ) -> None:
        self.outputs = Path(outputs)
        self.failed = Path(failed)
        self.path = self.outputs / PAGE
        self.clock = clock
        self.min_interval = min_interval
        self.log = logs.get()
        self.renders = 0  # pages written; for tests and the curious
        self._entries: deque[Entry] = deque(maxlen=max(1, keep))
        self._status: dict[str, Any] = {"state": "unknown"}
        self._key: tuple[object, ...] | None = None
        self._rendered_at = float("-inf")
        self._pending = False
        self._error_logged_at = float("-inf")
        # The loop calls from one thread, but close() may come from a signal path.
        self._lock = threading.Lock()
        try:
            self._entries.extend(load_recent(self.outputs, self.failed, self._entries.maxlen or keep))
        except Exception:
            self.log.exception("share page: could not read earlier results", outputs=str(self.outputs))

    def on_status(self, status: dict[str, Any]) -> None:
        cur = status.get("current")
        # What people wait to see at once: the state, the job being made, and what is waiting
        # (a photo they just dropped). Progress ticks alone render at most every min_interval.
        key = (
            status.get("state"),
            cur.get("job") if isinstance(cur, Mapping) else None,
            repr(status.get("queue")),
            repr(status.get("arriving")),
        )
        with self._lock:
            self._status = dict(status)
            if key != self._key or self.clock() - self._rendered_at >= self.min_interval:
                self._key = key
                self._write()
            else:
                self._pending = True

    def on_job_finished(self, event: JobFinished) -> None:
        with self._lock:
            try:
                self._entries.append(entry_from_event(event, self.outputs))
            except Exception:
                self.log.exception("share page: could not read a finished job", job=event.job)
            self._write()

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._write()

    def _write(self) -> None:
        """Render and publish; never raises, since a page problem must not stop the daemon."""
        self._rendered_at = self.clock()
        self._pending = False
        try:
            page = render(self._status, list(reversed(self._entries)))
            fsops.write_atomic(self.path, page.encode("utf-8"), durable=False)
            self.renders += 1
        except Exception as e:
            if self._rendered_at - self._error_logged_at >= ERROR_LOG_INTERVAL:
                self._error_logged_at = self._rendered_at
                self.log.warning("share page not updated", path=str(self.path), error=repr(e))
