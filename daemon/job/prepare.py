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

from PIL import Image

from daemon.config import Settings
from daemon.encode.recipes import RecipeConfig
from daemon.engine.family import Family
from daemon.engine.interface import GenerationRequest, ModelInfo
from daemon.errors import JobError, SidecarError
from daemon.folders.jobs import Job, write_record
from daemon.folders.names import RAW_EXTS, sort_inputs, split_name
from daemon.job.image import fit_to, load_image
from daemon.job.record import ImageSize, Inputs, JobRecord, ModelUsed, Timings, this_host, versions
from daemon.job.sidecar import JobParams, defaults, read_sidecar


@dataclass
class Prepared:
    """A job ready to generate: the request, what to make of the frames, and its record so far."""

    job: Job
    params: JobParams
    request: GenerationRequest
    recipes: dict[str, RecipeConfig]  # the outputs to make besides the master, picked once
    record: JobRecord  # inputs, prompt, source image, model, queued and started times
    effective: Effective | None = None  # steps and guidance in force, and where each came from


def _split_inputs(job: Job, settings: Settings) -> tuple[Path, Path | None]:
    """The job's image and sidecar; a JobError when the pair is not exactly one of each."""
    # Companions (a RAW file, an .xmp) travel with the job but are never read.
    images, sidecars, companions = sort_inputs(job.files)
    if len(sidecars) > 1:
        raise SidecarError(
            f"There are {len(sidecars)} prompt files for one image: {', '.join(sidecars)}. "
            "Keep only one of them (a .txt, .toml or .json file with the same name as the image)."
        )
    if not images:
        raw = [n for n in companions if split_name(n)[1] in RAW_EXTS]
        alone = f"The prompt file {sidecars[0]}" if sidecars else ", ".join(companions)
        raise JobError(
            f"{alone} has no image beside it. Put an image with the same name "
            f"(for example {job.stem}.png or {job.stem}.jpg) in the same folder as the prompt file."
            + (
                f" {raw[0]} is a camera RAW file, which cannot be used: save a JPEG copy of it."
                if raw
                else ""
            )
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
        return read_sidecar(sidecar, settings.generation, settings.limits, recipes, set(settings.loras))
    assert settings.generation.default_prompt is not None  # _split_inputs failed the job otherwise
    return defaults(settings.generation, prompt=settings.generation.default_prompt)


@dataclass(frozen=True)
class Effective:
    """A job's steps and guidance and where each came from ("sidecar", "adapter", "config", "model")."""

    steps: int
    steps_from: str
    guidance_scale: float
    guidance_scale_from: str
    loras: tuple[str, ...]  # every adapter in force: [model] loras, then the job's own


def effective(params: JobParams, settings: Settings, family: Family) -> Effective:
    """Steps and guidance in order: the prompt file, an adapter's own, [generation], the model's published.

    An adapter's values come before the config's because a distilled adapter does not work at the
    config's 40 steps with guidance (and costs ten times as long); the job's own adapters are asked
    before the always-on ones.
    """
    loras = tuple(settings.model.loras) + tuple(n for n in params.loras if n not in settings.model.loras)
    asked = [settings.loras[n] for n in (*params.loras, *settings.model.loras) if n in settings.loras]
    gen = settings.generation

    def pick(key: str, model_value: Any) -> tuple[Any, str]:
        if key in params.from_sidecar:
            return getattr(params, key), "sidecar"
        for adapter in asked:
            if getattr(adapter, key) is not None:
                return getattr(adapter, key), "adapter"
        if getattr(gen, key) is not None:
            return getattr(gen, key), "config"
        return model_value, "model"

    steps, steps_from = pick("steps", family.default_steps)
    guidance, guidance_from = pick("guidance_scale", family.default_guidance)
    return Effective(int(steps), steps_from, float(guidance), guidance_from, loras)


def draw_seed(settings: Settings) -> int:
    """A random seed, drawn when a job is claimed and kept in its claim record from the start
    (one write of the record, not two), for when its prompt file and the config name none."""
    return random.randint(0, settings.limits.max_seed)


def _seed(job: Job, params: JobParams, settings: Settings, log: Any) -> int:
    """The prompt file's (or config's) seed; else the one drawn when the job was claimed; else a new one.

    A new one (a job claimed without one) is written into the claim record before any model
    work, so a job resumed after a crash, a lost worker or an out-of-memory retry makes the clip
    it would have made.
    """
    if params.seed is not None:
        return params.seed
    if job.seed is None:
        job.seed = draw_seed(settings)
        try:
            write_record(job)
        except OSError as e:
            log.warning(
                "cannot keep the drawn seed in the claim record; a resumed job draws anew", error=str(e)
            )
    return job.seed


def _fitted_if_smaller(image: Image.Image, width: int, height: int) -> Image.Image:
    """The picture fitted to the clip here only when that makes it smaller.

    One with fewer pixels than the clip goes as it is: to a cluster worker that is fewer bytes,
    and the upscale (most of a job's cost on the coordinator for a small image) runs where the
    frames are made, which fits it anyway (``engine.interface.first_frame``), and from the
    original, so a smaller size after running out of memory is resampled once, not twice.
    """
    if image.width * image.height < width * height:
        return image
    return fit_to(image, width, height)


def prepare(job: Job, settings: Settings, model: ModelInfo, log: Any, *, queued_at: datetime) -> Prepared:
    """Check a claimed job's inputs and size its clip; raise JobError for anything wrong with them.

    Steps:
    1. pair, sidecar and image checks;
    2. size the clip (``ModelInfo.clip_size``), centre-crop the image to it;
    3. pick the seed (``_seed``), check the request against what the model takes.
    """
    started = datetime.now().astimezone()
    table = settings.recipe_table()
    image_path, sidecar_path = _split_inputs(job, settings)
    params = _params(sidecar_path, settings, set(table))
    image = load_image(
        image_path,
        max_pixels=settings.limits.max_image_pixels,
        max_bytes=settings.limits.max_image_bytes,
        formats=settings.limits.image_formats,
    )
    width, height = model.clip_size(image.width, image.height, params.resolution)
    if model.fixed_size is not None:
        log.info("this model makes one clip size only; resolution is not used", clip_size=f"{width}x{height}")
    seed = _seed(job, params, settings, log)
    eff = effective(params, settings, model.family)
    request = GenerationRequest(
        image=_fitted_if_smaller(image, width, height),
        width=width,
        height=height,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_frames=params.num_frames,
        fps=params.fps,
        steps=eff.steps,
        guidance_scale=eff.guidance_scale,
        seed=seed,
        loras=params.loras,
    )
    model.check(request)
    names = params.recipes if params.recipes is not None else settings.output.default_recipes
    recipes = {name: table[name] for name in names}
    log.info(
        "job started",
        image=image_path.name,
        sidecar=sidecar_path.name if sidecar_path else None,
        source_size=f"{image.width}x{image.height}",
        clip_size=f"{width}x{height}",
        frames=params.num_frames,
        steps=eff.steps,
        steps_from=eff.steps_from,
        guidance_scale=eff.guidance_scale,
        guidance_scale_from=eff.guidance_scale_from,
        loras=list(eff.loras) or None,
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
    return Prepared(job, params, request, recipes, record, eff)
