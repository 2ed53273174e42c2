"""One claimed job, from its inputs to its outputs: validate, generate, encode, describe.

Every input is checked (sidecar, pairing, image) before the GPU is touched, in the
spirit of diffusers' ``check_inputs``: a bad job costs milliseconds, not a model run.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__
from daemon.config import Settings
from daemon.encode import EncodeResult, encode_job, select_ffmpeg
from daemon.errors import JobError, SidecarError
from daemon.folders import fsops
from daemon.folders.jobs import Job
from daemon.folders.scan import split_name
from daemon.generate import GenerationRequest, Generator
from daemon.job.image import clip_size, fit_to, load_image, resolution_to_short_side
from daemon.job.sidecar import SIDECAR_EXTS, JobParams, defaults, read_sidecar

StepCallback = Callable[[int, int], None]


@dataclass
class Result:
    """What became of one job; ``error`` is the user-facing explanation when it failed."""

    job: Job
    ok: bool
    error: str | None = None
    recipe_errors: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _split_inputs(job: Job, settings: Settings) -> tuple[Path, Path | None]:
    """The job's image and sidecar; a JobError when the pair is not exactly one of each."""
    sidecars = [n for n in job.files if split_name(n)[1] in SIDECAR_EXTS]
    images = [n for n in job.files if n not in sidecars]
    if len(sidecars) > 1:
        raise SidecarError(
            f"There are {len(sidecars)} prompt files for one image: {', '.join(sidecars)}. "
            "Keep only one of them (a .txt, .toml or .json file with the same name as the image)."
        )
    if not images:
        raise JobError(
            f"The prompt file {sidecars[0]} has no image beside it. Put an image with the same name "
            f"(for example {job.stem}.png or {job.stem}.jpg) in the same folder as the prompt file."
        )
    if len(images) > 1:
        raise JobError(
            f"Several images share the name {job.stem!r}: {', '.join(images)}. "
            "Give each image its own name, with its own prompt file."
        )
    if not sidecars and settings.generation.default_prompt is None:
        raise SidecarError(
            f"No prompt file came with {images[0]} within {settings.watch.pair_timeout:g} seconds. "
            f"Add a text file named {job.stem}.txt holding the prompt (what should move, and how), "
            "then put both files in the inbox again."
        )
    return job.inputs / images[0], (job.inputs / sidecars[0]) if sidecars else None


def _params(sidecar: Path | None, settings: Settings, recipes: set[str]) -> JobParams:
    if sidecar is not None:
        return read_sidecar(sidecar, settings.generation, settings.limits, recipes)
    assert settings.generation.default_prompt is not None  # _split_inputs failed the job otherwise
    return defaults(settings.generation, prompt=settings.generation.default_prompt)


@functools.cache
def versions() -> dict[str, str]:
    found = {"i2vd": __version__, "python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


@dataclass
class Generated:
    """A job whose frames exist and now only need encoding and filing (held in memory)."""

    job: Job
    frames: Any  # numpy uint8 (F, H, W, 3)
    params: JobParams
    recipes: list[str]
    info: dict[str, Any]  # JOB.json so far: inputs, prompt, parameters, model, timings


def generate_job(
    job: Job,
    settings: Settings,
    generator: Generator,
    log: Any,
    *,
    queued_at: datetime,
    on_step: StepCallback | None = None,
) -> Generated:
    """Check a claimed job's inputs and make its frames; raise JobError for a job-level failure.

    Steps:
    1. pair, sidecar and image checks (no model work yet);
    2. size the clip from ``resolution`` and the image's aspect, centre-crop to it;
    3. generate the frames (seed recorded, random when the sidecar gives none).
    """
    started = datetime.now().astimezone()
    table = settings.recipe_table()
    image_path, sidecar_path = _split_inputs(job, settings)
    params = _params(sidecar_path, settings, set(table))
    image = load_image(
        image_path, max_pixels=settings.limits.max_image_pixels, max_bytes=settings.limits.max_image_bytes
    )
    fixed = getattr(generator, "fixed_size", None)
    if fixed is not None:
        # A model that makes one size only (CogVideoX 1.0): the image is centre-cropped to it.
        width, height = fixed
        log.info("this model makes one clip size only; resolution is not used", clip_size=f"{width}x{height}")
    else:
        width, height = clip_size(
            *image.size,
            short_side=resolution_to_short_side(params.resolution),
            multiple=generator.size_multiple,
        )
    frame = fit_to(image, width, height)
    seed = params.seed if params.seed is not None else random.randint(0, settings.limits.max_seed)
    recipes = list(params.recipes) if params.recipes is not None else list(settings.output.default_recipes)
    log.info(
        "job started",
        image=image_path.name,
        sidecar=sidecar_path.name if sidecar_path else None,
        source_size=f"{image.width}x{image.height}",
        clip_size=f"{width}x{height}",
        frames=params.num_frames,
        steps=params.steps,
        seed=seed,
        attempt=job.attempts,
    )

    t0 = time.monotonic()
    # The generator logs with the process logger; binding the job here copies its lines (an
    # out-of-memory retry, for one) into this job's JOB.log too.
    with structlog.contextvars.bound_contextvars(job=job.name):
        frames = generator.generate(
            GenerationRequest(
                image=frame,
                width=width,
                height=height,
                prompt=params.prompt,
                negative_prompt=params.negative_prompt,
                num_frames=params.num_frames,
                fps=params.fps,
                steps=params.steps,
                guidance_scale=params.guidance_scale,
                seed=seed,
            ),
            on_step,
        )
    gen_seconds = time.monotonic() - t0
    # What was made can be smaller than asked: running out of memory walks down model.oom_ladder.
    made_frames, made_height, made_width = (int(n) for n in frames.shape[:3])
    run = getattr(generator, "last_run", None)
    log.info("frames generated", seconds=round(gen_seconds, 2), clip_size=f"{made_width}x{made_height}")
    info: dict[str, Any] = {
        "job": job.name,
        "inputs": {"image": image_path.name, "sidecar": sidecar_path.name if sidecar_path else None},
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "parameters": {
            "resolution": (
                params.resolution
                if min(made_width, made_height) == min(width, height)
                else f"{min(made_width, made_height)}p"
            ),
            "width": made_width,
            "height": made_height,
            "num_frames": made_frames,
            "fps": params.fps,
            "steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "seed": seed,
            "seed_from": "sidecar" if params.seed is not None else "random",
        },
        "source_image": {"width": image.width, "height": image.height},
        "model": {"id": generator.model_id, "revision": generator.revision, "device": generator.device},
        "timings": {
            "queued": queued_at.isoformat(timespec="seconds"),
            "started": started.isoformat(timespec="seconds"),
            "generated": datetime.now().astimezone().isoformat(timespec="seconds"),
            "generate_seconds": round(gen_seconds, 3),
        },
        "host": platform.node(),
        "attempts": job.attempts,
        "versions": dict(versions()),
    }
    if isinstance(run, dict):
        # Size, frames and offload finally used, what was asked, the engine settings in force and
        # every out-of-memory attempt (daemon.generate.DiffusersGenerator.last_run).
        info["generation"] = run
    return Generated(job, frames, params, recipes, info)


def encode_generated(gen: Generated, settings: Settings, log: Any) -> Result:
    """Make the master clip and every recipe from the frames, then describe the job.

    Steps:
    1. encode the master and all recipes from the frames in one ffmpeg pass;
    2. note any recipe that failed (the job still counts: its clip exists);
    3. write ``JOB.json`` last, so its presence means the rest is there.
    """
    job, table = gen.job, settings.recipe_table()
    ffmpeg = select_ffmpeg(settings.output.ffmpeg)  # checked at start; cached
    enc: EncodeResult = encode_job(
        gen.frames, gen.params.fps, job.out, job.name, {n: table[n] for n in gen.recipes}, ffmpeg=ffmpeg
    )
    recipe_errors = {name: r.error or "failed" for name, r in enc.recipes.items() if not r.ok}
    for name, err in recipe_errors.items():
        log.warning("recipe failed", recipe=name, error=err)
    log.info("encoded", seconds=round(enc.seconds, 2), recipes=[n for n, r in enc.recipes.items() if r.ok])
    info = dict(gen.info)
    info["status"] = "done" if not recipe_errors else "done_with_recipe_errors"
    info["versions"] = {**info.get("versions", {}), "ffmpeg": ffmpeg.version}
    info["master"] = enc.master.name
    info["recipes"] = {
        name: {"ok": r.ok, "file": r.path.name if r.path else None, "error": r.error}
        for name, r in enc.recipes.items()
    }
    info["timings"] = {
        **gen.info["timings"],
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "encode_seconds": round(enc.seconds, 3),
    }
    if recipe_errors:
        lines = [f"{name}: {err}" for name, err in recipe_errors.items()]
        fsops.write_atomic(
            job.out / f"{job.name}.recipe-errors.txt",
            (
                "The clip was made, but these extra versions of it failed:\n" + "\n".join(lines) + "\n"
            ).encode(),
        )
    fsops.write_json_atomic(job.out / f"{job.name}.json", info)
    return Result(job, ok=True, recipe_errors=recipe_errors, info=info)
