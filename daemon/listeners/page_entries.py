"""What the share page lists: one entry per finished or failed job, from events or from disk.

At start the newest job folders are found by the timestamp in their names, so a share with
thousands of old jobs costs one directory walk and ``keep`` small reads, once.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.folders import names
from daemon.folders.names import ERROR_FILE
from daemon.job.record import JobRecord
from daemon.listeners.events import JobFinished

# Bounds that keep one render small whatever lands on the share.
MAX_PROMPT = 2000
MAX_ERROR = 4000
MAX_FILES = 20
MAX_DEPTH = 8  # subfolders of the inbox mirrored under outputs/; deeper is surely not ours


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


def _read_record(folder: Path) -> JobRecord:
    return JobRecord.read(folder)


def entry_from_event(event: JobFinished, outputs: Path) -> Entry:
    if event.outcome == "done":
        record = event.record if event.record is not None else _read_record(event.folder)
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
                entry = done_entry(path, outputs, _read_record(path))
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
