"""Names the daemon gives things: JOB folder names and the files it writes beside a job.

One home for them, because three parts must agree: the claim makes JOB names, the share
page and recovery read them back, and the inbox scanner must recognise the daemon's own
files when a person drags a failed job's folder back into the inbox to retry it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

ERROR_FILE = "error.txt"
LOCK_FILE = "daemon.lock"

# NAME_YYYYMMDD_HHMMSS, then -2, -3... on a clash (local time the job started).
STAMP_FORMAT = "_%Y%m%d_%H%M%S"
STAMP_BYTES = len("_20261122_143005")
JOB_NAME = re.compile(r"(?P<stem>.+)_(?P<date>\d{8})_(?P<time>\d{6})(?:-(?P<clash>\d+))?")

# The last paragraph of every error.txt: how to retry. Recognising an error.txt by it (not by
# its name alone) keeps a user's own error.png + error.txt pair a normal job.
RETRY_ADVICE = (
    "To try again: fix the problem, then drag this whole folder back into the inbox folder it "
    "came from (or move the image and its prompt file back there). The daemon ignores this "
    "error.txt and its .log file."
)
# What error.txt files of earlier releases ended with; they may still sit in failed/.
_OLD_RETRY_ADVICE = ("To try again, fix the problem and move the files back into the inbox.",)

# Bytes read of a file that might be ours; an error.txt is never larger than a few KiB.
_SNIFF_BYTES = 64 * 1024
# File-manager litter that may sit in a returned folder and may go with it.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def job_name(stem: str, when: datetime, clash: int = 1) -> str:
    base = stem + when.strftime(STAMP_FORMAT)
    return base if clash == 1 else f"{base}-{clash}"


def is_job_name(name: str) -> bool:
    return JOB_NAME.fullmatch(name) is not None


def job_time(name: str) -> tuple[str, str, int] | None:
    """(date, time, clash) of a JOB name, for sorting newest first; None if it is not one."""
    m = JOB_NAME.fullmatch(name)
    if m is None:
        return None
    return m["date"], m["time"], int(m["clash"] or 1)


def job_files(job: str) -> tuple[str, ...]:
    """The files named after a job that it may leave beside the user's inputs."""
    return (f"{job}.log", f"{job}.json", f"{job}.recipe-errors.txt")


def own_file_kind(name: str, head: bytes | None) -> str | None:
    """Whether a file is one the daemon wrote beside a job ("error", "log", "record", "recipe-errors").

    ``head`` is the start of the file's content, needed for names a person could also use:
    ``error.txt`` and ``X_YYYYMMDD_HHMMSS.json`` (a camera names photos like job folders).
    Returns None for a user's file.
    """
    if name == ERROR_FILE:
        text = (head or b"").decode("utf-8", "replace")
        return "error" if any(a in text for a in (RETRY_ADVICE, *_OLD_RETRY_ADVICE)) else None
    for suffix, kind in ((".recipe-errors.txt", "recipe-errors"), (".log", "log"), (".json", "record")):
        if name.endswith(suffix) and is_job_name(name[: -len(suffix)]):
            if kind != "record":
                return kind
            try:
                record = json.loads((head or b"").decode("utf-8"))
            except ValueError:
                return None
            return kind if isinstance(record, dict) and record.get("job") == name[: -len(suffix)] else None
    return None


def needs_content(name: str) -> bool:
    """Whether ``own_file_kind`` needs the file's content to decide (cheap name test first)."""
    return name == ERROR_FILE or (name.endswith(".json") and is_job_name(name[:-5]))


def sniff(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(_SNIFF_BYTES)
    except OSError:
        return None
