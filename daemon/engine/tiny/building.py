"""Saving a tiny build once: atomically, into the model cache, with a marker written last.

Shared by every tiny build (``daemon.engine.tiny.registry``). Safe to call from several processes
at once: each builds into its own temporary sibling and the first rename wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Written last into a finished build; its presence (with the right version) is what "complete" means.
MARKER = "i2vd-tiny.json"


def is_complete(folder: Path, version: int) -> bool:
    """True when ``folder`` holds a finished build of this recipe ``version``."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == version


def build_once(dest: Path, make: Callable[[], Any], marker: dict[str, Any]) -> Path:
    """Save the pipeline ``make()`` returns into ``dest`` atomically, unless a complete build is there.

    ``marker`` (with its ``version``) is written last, so its presence means a finished build. Safe
    to call from several processes at once: each builds into its own temporary sibling and the
    first rename wins.
    """
    dest = Path(dest)
    version = int(marker["version"])
    if is_complete(dest, version):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A sibling on the same file system, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is not secret and other users may load it
    try:
        make().save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        if dest.exists() and not is_complete(dest, version):
            # A half-written or outdated build (older recipe, or a copy interrupted by hand): replace it.
            # Renamed aside first so no reader ever sees a folder that is being deleted.
            stale = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale-", dir=dest.parent))
            with contextlib.suppress(FileNotFoundError):  # someone else removed it meanwhile
                os.rename(dest, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished first (dest is now a non-empty folder): use its build.
            if not is_complete(dest, version):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
