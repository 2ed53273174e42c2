"""A generated job described and its outputs made: encode, then write JOB.json last.

Runs on the filing thread, after the frames came back from wherever they were generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon.config import Settings
from daemon.encode.ffmpeg import select_ffmpeg
from daemon.encode.onepass import EncodeResult, encode_job
from daemon.engine.interface import GenerationResult
from daemon.folders import fsops
from daemon.folders.jobs import Job
from daemon.folders.names import job_files
from daemon.job.encoded import EncodedFiles
from daemon.job.prepare import Prepared
from daemon.job.record import JobRecord, Parameters, RecipeEntry, Worker


@dataclass
class Result:
    """What became of one job; ``error`` is the user-facing explanation when it failed."""

    job: Job
    ok: bool
    error: str | None = None
    recipe_errors: dict[str, str] = field(default_factory=dict)
    record: JobRecord | None = None


@dataclass
class Generated:
    """A job whose frames exist and now only need encoding and filing (held in memory)."""

    prepared: Prepared
    result: GenerationResult
    generate_seconds: float
    worker: Worker | None = None

    @property
    def job(self) -> Job:
        return self.prepared.job


def describe(gen: Generated) -> JobRecord:
    """The job's record with what the engine really made (smaller than asked after an OOM)."""
    p, frames = gen.prepared, gen.result.frames
    made_frames, made_height, made_width = (int(n) for n in frames.shape[:3])
    asked = p.request
    # Shallow: every part changed below is replaced whole, except the timings, copied on their own
    # (a deep copy of the record was a tenth of the filing thread's time in a backlog).
    record = p.record.model_copy()
    record.timings = p.record.timings.model_copy()
    record.parameters = Parameters(
        resolution=(
            p.params.resolution
            if min(made_width, made_height) == min(asked.width, asked.height)
            else f"{min(made_width, made_height)}p"
        ),
        width=made_width,
        height=made_height,
        num_frames=made_frames,
        fps=asked.fps,
        steps=asked.steps,
        steps_from=p.effective.steps_from if p.effective else None,
        guidance_scale=asked.guidance_scale,
        guidance_scale_from=p.effective.guidance_scale_from if p.effective else None,
        seed=asked.seed,
        seed_from=p.effective.seed_from if p.effective else None,
        loras=(list(p.effective.loras) or None) if p.effective else None,
    )
    record.timings.generated = datetime.now().astimezone().isoformat(timespec="seconds")
    record.timings.generate_seconds = round(gen.generate_seconds, 3)
    record.generation = dict(gen.result.record) or None
    record.worker = gen.worker
    return record


def encode_and_record(gen: Generated, settings: Settings, log: Any) -> Result:
    """Make the master clip and every recipe from the frames, then describe the job.

    Steps:
    1. encode the master and all recipes from the frames in one ffmpeg pass;
    2. note any recipe that failed (the job still counts: its clip exists);
    3. write ``JOB.json`` last, so its presence means the rest is there, then fsync ``out/``
       once, which makes every name written there durable (each file is fsynced on its own).
    """
    job = gen.job
    record = describe(gen)
    ffmpeg = select_ffmpeg(settings.output.ffmpeg)  # checked at start; cached
    ffmpeg_version = ffmpeg.version
    enc: EncodeResult
    if isinstance(gen.result.encoded, EncodedFiles):
        # Encoded on the worker that generated it: only written here, checked against its digests.
        enc = gen.result.encoded.publish(job.out)
        ffmpeg_version = gen.result.encoded.ffmpeg_version
    else:
        enc = encode_job(
            gen.result.frames,
            gen.prepared.request.fps,
            job.out,
            job.name,
            gen.prepared.recipes,
            ffmpeg=ffmpeg,
        )
    recipe_errors = {name: r.error or "failed" for name, r in enc.recipes.items() if not r.ok}
    for name, err in recipe_errors.items():
        log.warning("recipe failed", recipe=name, error=err)
    log.info("encoded", seconds=round(enc.seconds, 2), recipes=[n for n, r in enc.recipes.items() if r.ok])
    record.status = "done" if not recipe_errors else "done_with_recipe_errors"
    record.versions = {**record.versions, "ffmpeg": ffmpeg_version}
    record.master = enc.master.name
    record.recipes = {
        name: RecipeEntry(ok=r.ok, file=r.file, error=r.error) for name, r in enc.recipes.items()
    }
    record.timings.finished = datetime.now().astimezone().isoformat(timespec="seconds")
    record.timings.encode_seconds = round(enc.seconds, 3)
    names = job_files(job.name)
    if recipe_errors:
        lines = [f"{name}: {err}" for name, err in recipe_errors.items()]
        fsops.write_unseen(
            job.out / names.recipe_errors,
            (
                "The clip was made, but these extra versions of it failed:\n" + "\n".join(lines) + "\n"
            ).encode(),
        )
    # Straight to their names: out/ is seen only once published whole (``fsops.write_unseen``).
    fsops.write_unseen(job.out / names.record, fsops.json_bytes(record.to_json()))
    fsops.fsync_dir(job.out)  # once, for every name written there
    return Result(job, ok=True, recipe_errors=recipe_errors, record=record)
