"""A job's files encoded where it was generated (a cluster worker), published here.

A worker runs the same one-pass encode as the filing thread (``encode_job``, every output read
back before it counts), into a folder of its own, and sends the finished files as bytes with
their SHA-256. The coordinator checks each digest (a file damaged on the way is never
published) and writes them into the claim's ``out`` folder, which no one sees until it is
published whole (``fsops.write_unseen``).
A clip's files are a few MB, where its raw frames are up to ~50 MB: the encode on the worker
keeps the big payload off the network and the coordinator's CPU.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.encode.onepass import EncodeResult, RecipeOutcome
from daemon.folders import fsops


class TransferError(Exception):
    """A file came back from a worker different from what the worker wrote."""


@dataclass(frozen=True)
class EncodedFiles:
    """The master and recipe files of one job, as bytes, and what became of each recipe."""

    master: str  # file name of the master clip
    files: dict[str, bytes]  # file name -> contents (the master and every recipe that worked)
    digests: dict[str, str]  # file name -> SHA-256 hex, taken on the worker
    recipes: dict[str, RecipeOutcome]  # name -> what became of it, its path a bare file name
    seconds: float  # encoding time on the worker
    single_pass: bool
    ffmpeg_version: str
    command: list[str] = field(default_factory=list)

    @classmethod
    def collect(cls, enc: EncodeResult, ffmpeg_version: str) -> EncodedFiles:
        """Read back what ``encode_job`` wrote (on the worker) into bytes to send."""
        paths = [enc.master] + [r.path for r in enc.recipes.values() if r.ok and r.path is not None]
        files = {p.name: p.read_bytes() for p in paths}
        return cls(
            master=enc.master.name,
            files=files,
            digests={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            recipes={name: r.moved_to(None) for name, r in enc.recipes.items()},
            seconds=enc.seconds,
            single_pass=enc.single_pass,
            ffmpeg_version=ffmpeg_version,
            command=list(enc.command),
        )

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())

    def publish(self, out_dir: Path) -> EncodeResult:
        """Write every file into ``out_dir``, after checking it arrived intact.

        Each file is fsynced; the folder is not, here: the caller writes the job's record into it
        next (``finish.encode_and_record``), and that one fsync of the folder makes every name
        in it durable, before the folder is filed into ``outputs/``."""
        started = time.monotonic()
        for name, data in self.files.items():
            if Path(name).name != name or name.startswith("."):
                raise TransferError(f"a worker sent a file named {name!r}, which is not a plain file name")
            if hashlib.sha256(data).hexdigest() != self.digests.get(name):
                raise TransferError(f"{name} arrived from the worker damaged (its SHA-256 differs)")
        for name, data in self.files.items():
            fsops.write_unseen(out_dir / name, data)
        recipes = {name: r.moved_to(out_dir) for name, r in self.recipes.items()}
        return EncodeResult(
            master=out_dir / self.master,
            recipes=recipes,
            # The worker's encode plus writing the files here.
            seconds=self.seconds + (time.monotonic() - started),
            single_pass=self.single_pass,
            command=self.command,
        )

    def summary(self) -> dict[str, Any]:
        return {"files": sorted(self.files), "bytes": self.size, "seconds": round(self.seconds, 3)}
