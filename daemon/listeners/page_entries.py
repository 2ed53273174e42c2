"""What the share page lists: one entry per finished or failed job, from events or from disk.

At start the newest job folders are found by the timestamp in their names, so a share with
thousands of old jobs costs one directory walk and ``keep`` small reads, once.

Everything below outputs/ and failed/ is the share users' to change, so folders are walked and
files read with ``safe_dirs``: no link is followed, only plain files are read, and no more
than a record or an explanation can hold. What a link points at never reaches the page.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.folders import names, safe_dirs
from daemon.folders.names import ERROR_FILE
from daemon.job.record import JobRecord
from daemon.listeners.events import JobFinished
from daemon.states import Outcome

# Bounds that keep one render small whatever lands on the share.
MAX_PROMPT = 2000
MAX_ERROR = 4000
MAX_FILES = 20
MAX_DEPTH = 8  # subfolders of the inbox mirrored under outputs/; deeper is surely not ours
# Bytes read of a file on the share: error.txt is a few KiB, JOB.json a few tens.
MAX_ERROR_BYTES = 64 * 1024
MAX_RECORD_BYTES = 4 * 1024 * 1024  # max_prompt_chars is the operator's to raise


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
    outcome: Outcome
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
    # The poster recipe may be renamed or dropped by the operator; link only a plain file that is
    # there (a link someone put in its place is not shown as the clip's picture).
    candidates = [o.file for o in outs if o.recipe == "poster" and o.file] + [f"{job}.poster.png"]
    poster = _first_file(outputs, folder, candidates)
    return Entry(
        job=job,
        outcome=Outcome.DONE,
        link=_link(folder, outputs),
        when=_parse_time(record.timings.finished),
        prompt=_clip(record.prompt, MAX_PROMPT),
        parameters=record.parameters.model_dump(exclude_none=True),
        master=record.master,
        poster=poster,
        outputs=outs,
    )


def _first_file(base: Path, folder: Path, candidates: list[str]) -> str | None:
    """The first of ``candidates`` that is a plain file in ``folder`` (below ``base``)."""
    try:
        with safe_dirs.opened(base, folder.relative_to(base)) as fd:
            return next((c for c in candidates if "/" not in c and safe_dirs.is_file_at(fd, c)), None)
    except (OSError, ValueError):
        return None


def failed_entry(
    folder: Path, outputs: Path, error: str | None, when: datetime | None = None, *, base: Path | None = None
) -> Entry:
    """What the page shows of ``failed/REL/JOB`` (``folder``, below the failed folder ``base``).

    Its files are listed and its error.txt read without following a link below ``base``: a
    share user may have put one anywhere there, and what it points at is never shown.
    """
    base = folder.parent if base is None else base
    files: list[str] = []
    explained: tuple[str, datetime] | None = None
    try:
        with safe_dirs.opened(base, folder.relative_to(base)) as fd:
            with os.scandir(fd) as it:
                for e in it:
                    if e.name == ERROR_FILE or e.name.startswith(".") or e.name.endswith(".log"):
                        continue
                    if e.is_file(follow_symlinks=False):
                        files.append(e.name)
                        if len(files) >= MAX_FILES:
                            break
            if error is None or when is None:
                explained = _read_error(fd)
    except (OSError, ValueError):
        pass
    if explained is not None:
        error = explained[0] if error is None else error
        when = explained[1] if when is None else when
    return Entry(
        job=folder.name,
        outcome=Outcome.FAILED,
        link=_link(folder, outputs),
        when=when,
        error=_clip(error, MAX_ERROR) or "No explanation was recorded.",
        files=tuple(sorted(files)),
    )


def _read_error(folder_fd: int) -> tuple[str, datetime] | None:
    """error.txt's text and time, if it is a plain file; a link in its place is not followed."""
    try:
        data, st = safe_dirs.read_file_at(folder_fd, ERROR_FILE, MAX_ERROR_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", "replace"), datetime.fromtimestamp(st.st_mtime).astimezone()


def _read_record(base: Path, rel: Path) -> JobRecord:
    """``JOB.json`` of ``base/REL/JOB`` (``rel``), reached without following a link; ValueError or
    OSError if it is unreadable, not a plain file, or larger than any record the daemon writes."""
    with safe_dirs.opened(base, rel) as fd:
        data, _ = safe_dirs.read_file_at(fd, names.job_files(rel.name).record, MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"{names.job_files(rel.name).record} is larger than a job record")
    return JobRecord.model_validate_json(data)


def entry_from_event(event: JobFinished, outputs: Path, failed: Path | None = None) -> Entry:
    if event.outcome == Outcome.DONE:
        record = event.record
        if record is None:
            record = _read_record(outputs, event.folder.relative_to(outputs))
        return done_entry(event.folder, outputs, record)
    return failed_entry(event.folder, outputs, event.error, datetime.now().astimezone(), base=failed)


def _job_folders(root: Path) -> Iterator[tuple[tuple[str, str, int], Path]]:
    """Every folder under ``root`` named like a JOB, relative to it, with a sort key from the
    name's timestamp.

    The name alone says how new a job is, so no file is opened or stat'ed here; a folder
    named like a job is not descended into (its own files are no subfolders of ours), and
    neither is a link: each folder is opened from the one above it without following one.
    """
    try:
        fd = safe_dirs.open_under(root, create=False)
    except OSError:
        return
    try:
        yield from _walk(fd, Path("."), 0)
    finally:
        os.close(fd)


def _walk(fd: int, rel: Path, depth: int) -> Iterator[tuple[tuple[str, str, int], Path]]:
    try:
        with os.scandir(fd) as it:
            entries = [e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in entries:
        key = names.job_time(name)
        if key is not None:
            yield key, rel / name
        elif depth < MAX_DEPTH:
            try:
                sub = os.open(name, safe_dirs.DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # gone, or swapped for a link since the listing
            try:
                yield from _walk(sub, rel / name, depth + 1)
            finally:
                os.close(sub)


def load_recent(outputs: Path, failed: Path, keep: int) -> list[Entry]:
    """The newest ``keep`` jobs on disk, oldest first; reads at most ``keep`` small files."""
    found = [(key, rel, Outcome.DONE) for key, rel in _job_folders(outputs)]
    found += [(key, rel, Outcome.FAILED) for key, rel in _job_folders(failed)]
    newest = heapq.nlargest(keep, found, key=lambda t: t[0])
    entries: list[tuple[tuple[str, str, int], Entry]] = []
    for key, rel, outcome in newest:
        try:
            if outcome == Outcome.DONE:
                entry = done_entry(outputs / rel, outputs, _read_record(outputs, rel))
            else:
                with safe_dirs.opened(failed, rel) as fd:
                    explained = _read_error(fd)
                if explained is None:
                    continue
                entry = failed_entry(failed / rel, outputs, *explained, base=failed)
        except (OSError, ValueError):
            continue  # not a job folder after all, or one being written: skip it
        entries.append((key, entry))
    # Finish time orders them as they happened; the start time in the name breaks ties.
    entries.sort(key=lambda ke: (ke[1].when.timestamp() if ke[1].when else 0.0, ke[0]))
    return [e for _, e in entries]


# -- rendering ------------------------------------------------------------------------------
