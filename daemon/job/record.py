"""``JOB.json``: what a finished job was made from and how, as one typed record.

Written once, when the job's outputs are complete, and read back through the same type by
the share page, the metrics and the webhooks. Reading is lenient about what it does not know
(a record of an earlier or later release still shows), strict about the types it does.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from daemon import __version__
from daemon.folders.names import job_files


class _Part(BaseModel):
    # Unknown keys are kept, not refused: JOB.json may come from another release.
    model_config = ConfigDict(extra="allow")


class Inputs(_Part):
    image: str | None = None
    sidecar: str | None = None
    last_image: str | None = None  # the frame the clip ends on (NAME.last.EXT), when one came


class Parameters(_Part):
    """Every effective generation parameter, as made (smaller than asked after running out of memory)."""

    resolution: str | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    # Where steps and guidance_scale came from: "sidecar", "adapter" (a [loras.NAME] table's own
    # value, e.g. a distilled 4-step adapter), "config" ([generation]) or "model" (the family's
    # published default).
    steps_from: str | None = None
    guidance_scale: float | None = None
    guidance_scale_from: str | None = None
    seed: int | None = None
    seed_from: str | None = None  # "sidecar", "config" ([generation] seed) or "random"
    # LoRA adapters in force: the always-on ones ([model] loras), then the job's own.
    loras: list[str] | None = None


class ImageSize(_Part):
    width: int | None = None
    height: int | None = None


class ModelUsed(_Part):
    id: str | None = None
    revision: str | None = None
    device: str | None = None


class Worker(_Part):
    """Where the clip was made: this process, or a worker of a cluster."""

    name: str | None = None
    host: str | None = None
    device: str | None = None


class Timings(_Part):
    queued: str | None = None  # ISO 8601, local time with offset
    started: str | None = None
    generated: str | None = None
    finished: str | None = None
    generate_seconds: float | None = None
    encode_seconds: float | None = None


class RecipeEntry(_Part):
    """A recipe's ``encode.onepass.RecipeOutcome`` as JOB.json keeps it (its file by name)."""

    ok: bool = False
    file: str | None = None
    error: str | None = None


class JobRecord(_Part):
    job: str
    status: str | None = None  # "done" or "done_with_recipe_errors"
    inputs: Inputs = Field(default_factory=Inputs)
    prompt: str | None = None  # the prompt used
    # The prompt file's own text (None: none came, or it was empty), and where the prompt used came
    # from: "file", "default" (generation.default_prompt), "image" (written from the image by the
    # prompt model) or "rewritten" (the user's words rewritten with the image).
    user_prompt: str | None = None
    prompt_from: str | None = None
    negative_prompt: str | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    source_image: ImageSize = Field(default_factory=ImageSize)
    model: ModelUsed = Field(default_factory=ModelUsed)
    worker: Worker | None = None
    timings: Timings = Field(default_factory=Timings)
    host: str | None = None
    attempts: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    # What the engine really ran: family, sizes, offload, engine settings, every OOM attempt.
    generation: dict[str, Any] | None = None
    master: str | None = None
    recipes: dict[str, RecipeEntry] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def read(cls, folder: Path) -> JobRecord:
        """The record in ``outputs/REL/JOB`` (``JOB.json``); ValueError or OSError if unreadable."""
        return cls.model_validate_json((folder / job_files(folder.name).record).read_bytes())


@functools.cache
def versions() -> dict[str, str]:
    found = {"i2vd": __version__, "python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def this_host() -> str:
    return platform.node()
