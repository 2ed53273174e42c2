"""The share page's HTML: one self-contained file, every user-controlled text escaped.

Inline CSS (``share_page.css``, a package resource), no script, no external assets, so it
works over ``file://`` from a Samba or NFS share in any browser. Every link is relative to
``outputs/`` and percent-encoded segment by segment: names may hold spaces, quotes, ``#``,
``:`` or ``<script>``.
"""

from __future__ import annotations

import contextlib
import functools
import html
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from daemon.folders.names import ERROR_FILE
from daemon.listeners.page_entries import Entry
from daemon.states import Outcome

REFRESH_SECONDS = 10
QUEUE_SHOWN = 50  # waiting jobs listed by name; the rest are counted


@functools.cache
def _css() -> str:
    return resources.files("daemon.listeners").joinpath("share_page.css").read_text(encoding="utf-8")


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


def _paused(status: Mapping[str, Any]) -> str:
    """Why new clips are not started although files wait (the server's disk nearly full)."""
    reason = status.get("paused_reason")
    if not reason:
        return ""
    return (
        '<div class="warn">New clips are not being started: the server is short of disk space. '
        "Your files wait in the inbox and start by themselves once there is room; nothing is lost. "
        f'<span class="muted small">({_t(reason)})</span></div>'
    )


def _held(status: Mapping[str, Any]) -> str:
    """Why no new clip starts on purpose: the operator paused the queue, or it is outside the
    hours new clips are started in ([queue] active_hours)."""
    out = []
    paused = status.get("paused")
    if isinstance(paused, Mapping):
        out.append(
            '<div class="warn">New clips are paused by the operator '
            f"({_t(paused.get('by'))}, since {_t(paused.get('since'))}). Clips being made now finish; "
            "your files wait in the inbox and start by themselves when the queue goes on.</div>"
        )
    hours = status.get("active_hours")
    if isinstance(hours, Mapping) and not hours.get("open"):
        out.append(
            f'<div class="warn">New clips start only between {_t(hours.get("window"))}; the next '
            f"start is at {_t(hours.get('opens_at'))}. Your files wait in the inbox until then.</div>"
        )
    return "".join(out)


def _batches(status: Mapping[str, Any]) -> str:
    """The folders whose last waiting job was just filed: a team's whole batch is made."""
    raw = status.get("batches_done")
    items = []
    for b in raw if isinstance(raw, Sequence) and not isinstance(raw, str) else []:
        if not isinstance(b, Mapping):
            continue
        folder = "the inbox" if b.get("folder") == "." else f"the folder {b.get('folder')}"
        failed = f", {b.get('failed')} could not be made" if b.get("failed") else ""
        items.append(
            f"<li>Every clip from {_t(folder)} is finished: {_t(b.get('done'))} made{_t(failed)} "
            f'<span class="muted small">({_t(b.get("finished_at"))})</span></li>'
        )
    return f'<div class="box"><ul class="batches">{"".join(items)}</ul></div>' if items else ""


def _now_box(status: Mapping[str, Any]) -> str:
    """The job being made, with its progress; one box per job when several workers make clips."""
    running = status.get("in_flight")
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
    noticed = len(_arriving_entries(status))  # counted too: the heading counts what the box lists
    if not total:
        if arriving:
            return noticed, f'<div class="box">{arriving}</div>'
        return 0, '<div class="box"><span class="muted">No files are waiting.</span></div>'
    items = []
    ready_at = _ready_at(status)
    for pos, name in enumerate(queue[:QUEUE_SHOWN], 1):
        folder, _, stem = name.rpartition("/")
        where = f' <span class="muted small">in {_t(folder)}</span>' if folder and folder != "." else ""
        when = ready_at.get(name)
        when = f' <span class="muted small">· ready about {_t(when)}</span>' if when else ""
        items.append(f'<li><span class="pos">{pos}</span><span>{_t(stem)}{where}{when}</span></li>')
    more = total - min(len(queue), QUEUE_SHOWN)
    tail = f'<p class="muted small">… and {more} more waiting.</p>' if more > 0 else ""
    return total + noticed, f'<div class="box"><ol class="queue">{"".join(items)}</ol>{tail}{arriving}</div>'


def _ready_at(status: Mapping[str, Any]) -> dict[str, str]:
    """When each listed waiting job's clip should be ready ("14:05"), from the status' estimates."""
    raw = status.get("waiting")
    out: dict[str, str] = {}
    for entry in raw if isinstance(raw, Sequence) and not isinstance(raw, str) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("estimated_finish"), str):
            when = _hh_mm(entry["estimated_finish"])
            if when is not None:
                out[str(entry.get("job"))] = when
    return out


@functools.lru_cache(maxsize=4096)
def _hh_mm(iso: str) -> str | None:
    # Cached: the same few hundred times come back in every status while a queue drains.
    try:
        return f"{datetime.fromisoformat(iso):%H:%M}"
    except ValueError:
        return None


def _arriving_entries(status: Mapping[str, Any]) -> list[Sequence[Any]]:
    raw = status.get("arriving")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [e for e in raw if isinstance(e, Sequence) and not isinstance(e, str) and len(e) == 2]


def _arriving(status: Mapping[str, Any]) -> str:
    """Files seen in the inbox that are not ready yet: still being copied, or missing their partner."""
    items = []
    for entry in _arriving_entries(status)[:QUEUE_SHOWN]:
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


def card(e: Entry) -> str:
    """One finished or failed job's card: it depends on the entry alone, so it can be kept."""
    return _done_card(e) if e.outcome == Outcome.DONE else _failed_card(e)


def render(
    status: Mapping[str, Any],
    finished: Sequence[Entry],
    *,
    now: datetime | None = None,
    refresh: int = REFRESH_SECONDS,
    cards: Callable[[Entry], str] = card,
) -> str:
    """The whole page for ``status`` (as published to status.json) and ``finished`` (newest first);
    ``cards`` renders each entry (the share page passes one that remembers them)."""
    now = now or datetime.now().astimezone()
    state = str(status.get("state") or "unknown")
    css_class, state_text = _STATE_TEXT.get(state, ("unknown", "Status unknown"))
    queued, queue_html = _queue_box(status)
    done = [e for e in finished if e.outcome == Outcome.DONE]
    failed = [e for e in finished if e.outcome != Outcome.DONE]
    model = status.get("model")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Video clips</title>",
        f"<style>{_css()}</style></head><body><main>",
        "<h1>Video clips</h1>",
        f'<p><span class="state {css_class}">{_t(state_text)}</span> '
        f'<span class="muted small">Updated {_t(_when(now))}:{now:%S} · this page refreshes itself '
        f"every {int(refresh)} seconds</span></p>",
        _paused(status),
        _held(status),
        _batches(status),
        "<h2>Being made now</h2>",
        _now_box(status),
        f"<h2>Waiting ({queued})</h2>",
        queue_html,
        f"<h2>Finished clips ({len(done)})</h2>",
    ]
    if done:
        out.append(f'<div class="grid">{"".join(cards(e) for e in done)}</div>')
    else:
        out.append('<div class="box"><span class="muted">No finished clips yet.</span></div>')
    if failed:
        out.append(f"<h2>Could not be made ({len(failed)})</h2>")
        out.append(f'<div class="grid">{"".join(cards(e) for e in failed)}</div>')
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
