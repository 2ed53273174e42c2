"""Names: what each file in the inbox is, JOB folder names, and the files the daemon writes beside a job.

One home for them, because several parts must agree: the scanner groups inbox files by
name and the job picks its image and prompt file among them by the same rules; the claim
makes JOB names, the share page and recovery read them back; and the scanner must
recognise the daemon's own files when a person drags a failed job's folder back into the
inbox to retry it.

A group is every file in one folder sharing a name (``cat.png`` + ``cat.txt``). Each file
in it is one of:

- an image (``IMAGE_EXTS``): what the clip is made from;
- a prompt file (``SIDECAR_EXTS``);
- a companion (``COMPANION_EXTS``): what cameras and photo tools keep beside a photo, a RAW
  file or an edit-settings file, never read. Tools that name theirs after the whole photo
  name (darktable's ``IMG_1.CR2.xmp``, RawTherapee's ``IMG_1.jpg.pp3``, Google Takeout's
  ``IMG_1.jpg.json``) are grouped with the photo;
- anything else: a companion too when the group has an image (an iPhone Live Photo's
  ``.MOV``), otherwise taken for the image, so the job fails saying it is not one.

Companions go with their job into done/ or failed/, untouched; a group of companions alone
is not a job and stays in the inbox (see the README's "Dropping files").

An image ``NAME.last.EXT`` beside a job ``NAME`` (an image or a prompt file named NAME) is the
frame its clip ends on: its group ``NAME.last`` is then no job of its own but goes with NAME's
(see ``last_frame_of``). Alone, or with a prompt file ``NAME.last.txt`` of its own, it is an
ordinary image.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from daemon.messages import OLD_RETRY_ADVICE, RERUN_ADVICE, RETRY_ADVICE

ERROR_FILE = "error.txt"
LOCK_FILE = "daemon.lock"

# NAME_YYYYMMDD_HHMMSS, then -2, -3... on a clash (local time the job started).
STAMP_FORMAT = "_%Y%m%d_%H%M%S"
STAMP_BYTES = len("_20261122_143005")
JOB_NAME = re.compile(r"(?P<stem>.+)_(?P<date>\d{8})_(?P<time>\d{6})(?:-(?P<clash>\d+))?")


# Bytes read of a file that might be ours; an error.txt is never larger than a few KiB.
_SNIFF_BYTES = 64 * 1024
# File-manager litter that may sit in a returned folder and may go with it.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


# What Pillow decodes, by the names it registers for them, less what it only writes (PDF,
# Palm), cannot decode here (MPEG, WMF/EMF, the HDF5/GRIB/BUFR stubs) or must never open (EPS
# and PostScript run Ghostscript); plus HEIF and AVIF, which a plugin decodes. By name only:
# the job decides by content whether a file really is one.
IMAGE_EXTS = frozenset(
    {
        *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib"),
        *(".tif", ".tiff", ".heic", ".heif", ".avif", ".avifs", ".psd", ".tga", ".icb", ".vda"),
        *(".vst", ".ico", ".cur", ".icns", ".pcx", ".dcx", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm"),
        *(".qoi", ".dds", ".blp", ".sgi", ".rgb", ".rgba", ".bw", ".ras", ".msp", ".xbm", ".xpm"),
        *(".im", ".iim", ".pcd", ".pxr", ".mpo", ".fli", ".flc", ".ftc", ".ftu", ".gbr", ".fit"),
        *(".fits", ".j2k", ".jp2", ".jpx", ".j2c", ".jpc", ".jpf"),
    }
)
SIDECAR_EXTS = (".txt", ".toml", ".json")
# Camera RAW files: a photo the daemon cannot read, kept beside the JPEG a camera also wrote.
RAW_EXTS = frozenset(
    {".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".sr2", ".dng", ".raf", ".orf", ".rw2", ".rwl"}
    | {".srw", ".pef", ".3fr", ".iiq", ".x3f"}
)
# Edit settings and thumbnails photo tools keep beside a photo: Lightroom and darktable (.xmp),
# iPhone edits (.AAE), camera thumbnails (.THM), DxO (.dop), RawTherapee (.pp3).
COMPANION_EXTS = RAW_EXTS | {".xmp", ".aae", ".thm", ".dop", ".pp3"}

IMAGE, PROMPT, COMPANION, OTHER = "image", "prompt", "companion", "other"

# NAME.last.EXT: the last frame of job NAME's clip (lower case, as the README writes it).
LAST_MARK = ".last"

# ``NAME.cancel``: a share user asks for the job NAME of the same folder to be cancelled. Never
# part of a job, never failed as an orphan; the daemon removes it once it acted on it.
CANCEL_EXT = ".cancel"


def cancel_stem(filename: str) -> str | None:
    """The NAME a ``NAME.cancel`` file asks to cancel; None for any other file."""
    stem, ext = split_name(filename)
    return stem if ext == CANCEL_EXT and stem != filename else None


def split_name(filename: str) -> tuple[str, str]:
    """``'my.cat.PNG'`` -> ``('my.cat', '.png')``; the extension is lower-cased for matching."""
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem:
        return filename, ""
    return stem, "." + ext.lower()


def group_of(filename: str) -> tuple[str, str]:
    """(the NAME a file is grouped under, what it is: IMAGE, PROMPT, COMPANION or OTHER)."""
    stem, ext = split_name(filename)
    if ext in COMPANION_EXTS or ext == ".json":
        photo, photo_ext = split_name(stem)
        if photo_ext in IMAGE_EXTS or photo_ext in RAW_EXTS:
            return photo, COMPANION  # IMG_1.CR2.xmp, IMG_1.jpg.json: named after the whole photo name
    if ext in SIDECAR_EXTS:
        return stem, PROMPT
    if ext in IMAGE_EXTS:
        return stem, IMAGE
    return stem, COMPANION if ext in COMPANION_EXTS else OTHER


def sort_inputs(files: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """A group's file names as (images, prompt files, companions), each sorted.

    Exactly one image and at most one prompt file make a job. Files of no known kind count
    as companions beside an image, and as the image when there is none (the job then fails
    naming them); a group of companions alone is not a job.
    """
    files = sorted(files)
    if len(files) == 1:  # most groups while a backlog waits: the cheap way
        kind = group_of(files[0])[1]
        if kind == PROMPT:
            return [], files, []
        return ([], [], files) if kind == COMPANION else (files, [], [])
    kinds: dict[str, list[str]] = {IMAGE: [], PROMPT: [], COMPANION: [], OTHER: []}
    for name in files:
        kinds[group_of(name)[1]].append(name)
    if kinds[IMAGE]:
        return kinds[IMAGE], kinds[PROMPT], sorted(kinds[COMPANION] + kinds[OTHER])
    return kinds[OTHER], kinds[PROMPT], kinds[COMPANION]


def last_frame_of(stem: str) -> str | None:
    """The job NAME a group named ``NAME.last`` may give its last frame to; None for other names."""
    if stem.endswith(LAST_MARK) and len(stem) > len(LAST_MARK):
        return stem[: -len(LAST_MARK)]
    return None


def lends_last_frame(lead: Iterable[str], last: Iterable[str]) -> bool:
    """Whether the group ``NAME.last`` (file names ``last``) goes with the job ``NAME`` (``lead``).

    It does when it holds images only (a prompt file of its own makes it a job of its own) and
    NAME is a job, or about to be one: an image or a prompt file named NAME is there.
    """
    last = list(last)
    if not last or any(group_of(n)[1] != IMAGE for n in last):
        return False
    images, prompts, _ = sort_inputs(lead)
    return bool(images or prompts)


# The prompt-file key naming the last frame, a file in the same folder (instead of NAME.last.EXT).
LAST_IMAGE_KEY = "last_image"


def plain_image_name(value: object) -> str | None:
    """``value`` when it is a plain image file name of the same folder (``end.png``); None otherwise.

    No path of any kind (``/``, ``\\``, ``..``), no hidden name, no control character: a prompt
    file is a share user's, and this name is only ever looked up among the folder's own files.
    """
    if not isinstance(value, str) or not value or len(value) > 255 or value.startswith("."):
        return None
    if "/" in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value if group_of(value)[1] == IMAGE else None


def named_last_image(sidecar: str, head: bytes | None) -> str | None:
    """The file a ``.toml`` or ``.json`` prompt file names as its ``last_image``, when it names a
    plain image name (``plain_image_name``); None for any other file, value or unreadable text.

    The scanner reads this to wait for that file and take it with the job; the job itself checks
    the whole prompt file (and says what is wrong with it) as for any other key.
    """
    ext = split_name(sidecar)[1]
    if head is None or ext not in (".toml", ".json") or len(head) >= _SNIFF_BYTES:
        return None
    try:
        text = head.decode("utf-8-sig")
        table = tomllib.loads(text) if ext == ".toml" else json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return plain_image_name(table.get(LAST_IMAGE_KEY)) if isinstance(table, dict) else None


def split_last_frames(stem: str, files: Iterable[str]) -> tuple[list[str], list[str]]:
    """A job's file names as (its last-frame images ``STEM.last.EXT``, everything else), each sorted."""
    lasts: list[str] = []
    rest: list[str] = []
    for name in sorted(files):
        own, kind = group_of(name)
        (lasts if kind == IMAGE and own == stem + LAST_MARK else rest).append(name)
    return lasts, rest


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


# The daemon's own files named after a job, by kind (``own_file_kind`` tells them by these).
_OWN_SUFFIXES = {"log": ".log", "record": ".json", "recipe-errors": ".recipe-errors.txt"}


@dataclass(frozen=True)
class JobFiles:
    """The names of the files a job makes beside its clip; the only place they are formed."""

    master: str  # JOB.mp4, the clip
    log: str  # JOB.log
    record: str  # JOB.json
    recipe_errors: str  # JOB.recipe-errors.txt, when some extra versions failed

    def own(self) -> tuple[str, ...]:
        """The files it may leave beside the user's inputs (all but the clip)."""
        return (self.log, self.record, self.recipe_errors)


def job_files(job: str) -> JobFiles:
    """The names of ``job``'s own files."""
    own = {kind: f"{job}{suffix}" for kind, suffix in _OWN_SUFFIXES.items()}
    return JobFiles(f"{job}.mp4", own["log"], own["record"], own["recipe-errors"])


def own_file_kind(name: str, head: bytes | None) -> str | None:
    """Whether a file is one the daemon wrote beside a job ("error", "log", "record", "recipe-errors").

    ``head`` is the start of the file's content, needed for names a person could also use:
    ``error.txt`` and ``X_YYYYMMDD_HHMMSS.json`` (a camera names photos like job folders).
    Returns None for a user's file.
    """
    if name == ERROR_FILE:
        text = (head or b"").decode("utf-8", "replace")
        return "error" if any(a in text for a in (RETRY_ADVICE, RERUN_ADVICE, *OLD_RETRY_ADVICE)) else None
    for kind, suffix in sorted(_OWN_SUFFIXES.items(), key=lambda ks: -len(ks[1])):  # longest first
        if name.endswith(suffix) and is_job_name(name[: -len(suffix)]):
            if kind != "record":
                return kind
            try:
                record = json.loads((head or b"").decode("utf-8"))
            except ValueError:
                return None
            return kind if isinstance(record, dict) and record.get("job") == name[: -len(suffix)] else None
    return None


def may_be_own(name: str) -> bool:
    """Whether a file could be one the daemon wrote beside a job (a cheap test on the name)."""
    return name == ERROR_FILE or name.endswith((".log", ".json", ".txt"))


def needs_content(name: str) -> bool:
    """Whether ``own_file_kind`` needs the file's content to decide (cheap name test first)."""
    return name == ERROR_FILE or (name.endswith(".json") and is_job_name(name[:-5]))


def sniff(path: str, dir_fd: int | None = None) -> bytes | None:
    """The start of a plain file; None for anything else. A link is not followed and a FIFO
    swapped in meanwhile is not waited on (share users can do both)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = b""
        while len(head) < _SNIFF_BYTES and (chunk := os.read(fd, _SNIFF_BYTES - len(head))):
            head += chunk
        return head
    except OSError:
        return None
    finally:
        os.close(fd)
