"""A claimed job's inputs checked and sized, before any model work: local, cheap, on the loop.

Every input is checked (sidecar, pairing, image, and what the model can take) before a GPU is
touched, in the spirit of diffusers' ``check_inputs``: a bad job costs milliseconds, not a
model run, and the coordinator can do it without the model in its own process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.engine.interface import GenerationRequest, ModelInfo
from daemon.errors import JobError, SidecarError
from daemon.folders.jobs import Job
from daemon.folders.scan import split_name
from daemon.job.image import fit_to, load_image
from daemon.job.record import ImageSize, Inputs, JobRecord, ModelUsed, Timings, this_host, versions
from daemon.job.sidecar import SIDECAR_EXTS, JobParams, defaults, read_sidecar


@dataclass
class Prepared:
    """A job ready to generate: the request, what to make of the frames, and its record so far."""

    job: Job
    params: JobParams
    request: GenerationRequest
    recipes: list[str]
    record: JobRecord  # inputs, prompt, source image, model, queued and started times


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


def _params(sidecar: Path | None, settings: Settings, recipes: set[str]) -> JobParams:
    if sidecar is not None:
        return read_sidecar(sidecar, settings.generation, settings.limits, recipes)
    assert settings.generation.default_prompt is not None  # _split_inputs failed the job otherwise
    return defaults(settings.generation, prompt=settings.generation.default_prompt)


def prepare(job: Job, settings: Settings, model: ModelInfo, log: Any, *, queued_at: datetime) -> Prepared:
    """Check a claimed job's inputs and size its clip; raise JobError for anything wrong with them.

    Steps:
    1. pair, sidecar and image checks;
    2. size the clip (``ModelInfo.clip_size``), centre-crop the image to it;
    3. check the request against what the model takes; pick the seed (random when not given).
    """
    started = datetime.now().astimezone()
    table = settings.recipe_table()
    image_path, sidecar_path = _split_inputs(job, settings)
    params = _params(sidecar_path, settings, set(table))
    image = load_image(
        image_path, max_pixels=settings.limits.max_image_pixels, max_bytes=settings.limits.max_image_bytes
    )
    width, height = model.clip_size(image.width, image.height, params.resolution)
    if model.fixed_size is not None:
        log.info("this model makes one clip size only; resolution is not used", clip_size=f"{width}x{height}")
    seed = params.seed if params.seed is not None else random.randint(0, settings.limits.max_seed)
    request = GenerationRequest(
        image=fit_to(image, width, height),
        width=width,
        height=height,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_frames=params.num_frames,
        fps=params.fps,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        seed=seed,
    )
    model.check(request)
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
    record = JobRecord(
        job=job.name,
        inputs=Inputs(image=image_path.name, sidecar=sidecar_path.name if sidecar_path else None),
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        source_image=ImageSize(width=image.width, height=image.height),
        model=ModelUsed(id=model.model_id, revision=model.revision, device=model.device),
        timings=Timings(
            queued=queued_at.isoformat(timespec="seconds"), started=started.isoformat(timespec="seconds")
        ),
        host=this_host(),
        attempts=job.attempts,
        versions=dict(versions()),
    )
    return Prepared(job, params, request, recipes, record)
