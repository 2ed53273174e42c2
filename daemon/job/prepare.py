"""A claimed job's inputs checked and sized, before any model work: local, cheap, on the loop.

Every input is checked (sidecar, pairing, image, and what the model can take) before a GPU is
touched, in the spirit of diffusers' ``check_inputs``: a bad job costs milliseconds, not a
model run, and the coordinator can do it without the model in its own process. The one costly
step, a prompt written from the image (``[prompting]``), comes last, once every check has passed.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.config import Settings
from daemon.encode.recipes import RecipeConfig
from daemon.engine.family_spec import Family
from daemon.engine.interface import GenerationRequest, ModelInfo
from daemon.errors import JobError, SidecarError
from daemon.folders.jobs import Job, write_record
from daemon.folders.names import LAST_MARK, RAW_EXTS, group_of, sort_inputs, split_last_frames, split_name
from daemon.job import prompt_source
from daemon.job.image import load_image
from daemon.job.printable import printable
from daemon.job.record import ImageSize, Inputs, JobRecord, ModelUsed, Timings, this_host, versions
from daemon.job.sidecar import JobParams, defaults, read_sidecar
from daemon.sizing import fit_to


@dataclass
class Prepared:
    """A job ready to generate: the request, what to make of the frames, and its record so far."""

    job: Job
    params: JobParams
    request: GenerationRequest
    recipes: dict[str, RecipeConfig]  # the outputs to make besides the master, picked once
    record: JobRecord  # inputs, prompt, source image, model, queued and started times
    effective: Effective | None = None  # steps and guidance in force, and where each came from


def _split_inputs(job: Job, settings: Settings) -> tuple[Path, Path | None, Path | None, list[str]]:
    """The job's image, sidecar and last frame ``NAME.last.EXT``, and the other images that came
    with it (the one its prompt file names as ``last_image``); a JobError when the pair is not
    exactly one of each, or there is more than one last frame."""
    # Companions (a RAW file, an .xmp) travel with the job but are never read.
    lasts, others = split_last_frames(job.stem, job.files)
    images, sidecars, companions = sort_inputs(others)
    named = [n for n in images if group_of(n)[0] != job.stem]  # taken with the job for last_image
    images = [n for n in images if n not in named]
    if len(lasts) > 1:
        raise JobError(
            f"There are {len(lasts)} last images for {job.stem!r}: {', '.join(lasts)}. Keep only one"
            f" (named {job.stem}{LAST_MARK} and the image type, e.g. {job.stem}{LAST_MARK}.jpg)."
        )
    if len(sidecars) > 1:
        raise SidecarError(
            f"There are {len(sidecars)} prompt files for one image: {', '.join(sidecars)}. "
            "Keep only one of them (a .txt, .toml or .json file with the same name as the image)."
        )
    if not images:
        raw = [n for n in companions if split_name(n)[1] in RAW_EXTS]
        alone = f"The prompt file {sidecars[0]}" if sidecars else ", ".join(companions + lasts)
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
    if (
        not sidecars
        and settings.generation.default_prompt is None
        and not prompt_source.prompting_on(settings)
    ):
        raise SidecarError(
            f"No prompt file came with {images[0]} within {settings.watch.pair_timeout:g} seconds. "
            f"Add a text file named {job.stem}.txt holding the prompt (what should move, and how), "
            "then put both files in the inbox again."
        )
    sidecar = (job.inputs / sidecars[0]) if sidecars else None
    return job.inputs / images[0], sidecar, (job.inputs / lasts[0]) if lasts else None, named


def _last_frame(job: Job, params: JobParams, last: Path | None, named: list[str]) -> Path | None:
    """The frame the clip ends on: ``NAME.last.EXT``, or the file the prompt file names as
    ``last_image`` (which must have come with the job: a file of the same folder); None without one."""
    if params.last_image is None:
        return last
    if last is not None and last.name != params.last_image:
        raise SidecarError(
            f"The prompt file names {params.last_image} as the last image, and {last.name} came with the"
            " job too: keep one of them (remove last_image from the prompt file, or the other image)."
        )
    if last is None and params.last_image not in named:
        raise SidecarError(
            f"The prompt file names {params.last_image} as the last image (last_image), but no such"
            " image was beside it: put that image in the same folder as the prompt file (on its own,"
            " without a prompt file of its own), or correct the name, then drop the files again."
        )
    return job.inputs / params.last_image


def _params(sidecar: Path | None, settings: Settings, recipes: set[str]) -> JobParams:
    if sidecar is not None:
        return read_sidecar(
            sidecar,
            settings.generation,
            settings.limits,
            recipes,
            set(settings.loras),
            allow_empty_txt=prompt_source.prompting_on(settings),
        )
    if prompt_source.prompting_on(settings):
        return defaults(settings.generation, prompt="")  # written from the image
    assert settings.generation.default_prompt is not None  # _split_inputs failed the job otherwise
    return defaults(settings.generation, prompt=settings.generation.default_prompt)


@dataclass(frozen=True)
class Effective:
    """A job's steps, guidance and seed, and where each came from: "sidecar", "adapter", "config",
    "model" or (the seed only) "random"."""

    steps: int
    steps_from: str
    guidance_scale: float
    guidance_scale_from: str
    seed_from: str
    loras: tuple[str, ...]  # every adapter in force: [model] loras, then the job's own


def effective(params: JobParams, settings: Settings, family: Family) -> Effective:
    """The one place that tells which value is in force and where it came from.

    Steps and guidance in order: the prompt file, an adapter's own, [generation], the model's
    published. An adapter's values come before the config's because a distilled adapter does not
    work at the config's 40 steps with guidance (and costs ten times as long); the job's own
    adapters are asked before the always-on ones. The seed: the prompt file's, [generation]'s, or
    one drawn for the job (``_seed``).
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
    if "seed" in params.from_sidecar:
        seed_from = "sidecar"
    else:
        seed_from = "config" if params.seed is not None else "random"
    return Effective(int(steps), steps_from, float(guidance), guidance_from, seed_from, loras)


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


def prepare(
    job: Job,
    settings: Settings,
    model: ModelInfo,
    log: Any,
    *,
    queued_at: datetime,
    writer: Any = None,
) -> Prepared:
    """Check a claimed job's inputs and size its clip; raise JobError for anything wrong with them.

    Steps:
    1. pair, sidecar and image checks; where the prompt comes from (``prompt_source.plan``);
    2. size the clip (``ModelInfo.clip_size``), centre-crop the image to it;
    3. pick the seed (``_seed``), check the request against what the model takes;
    4. the prompt written from the image when the plan asks (``writer``, a ``PromptWriter``).
    """
    started = datetime.now().astimezone()
    table = settings.recipe_table()
    image_path, sidecar_path, last_path, named = _split_inputs(job, settings)
    params = _params(sidecar_path, settings, set(table))
    source = prompt_source.plan(sidecar_path is not None, params.prompt, settings)
    if source.needs_writer and not model.family.takes_prompt:  # a prompt would not be read
        source = prompt_source.PromptPlan("file" if sidecar_path else "default", source.user_prompt)
    last_path = _last_frame(job, params, last_path, named)
    limits = settings.limits
    load = functools.partial(
        load_image,
        max_pixels=limits.max_image_pixels,
        max_bytes=limits.max_image_bytes,
        formats=limits.image_formats,
    )
    image = load(image_path)
    # The last frame passes the same checks, and is cropped and resized to the clip as the first is:
    # the clip's shape follows the first image alone.
    last = load(last_path) if last_path is not None else None
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
        last_image=_fitted_if_smaller(last, width, height) if last is not None else None,
    )
    model.check(request)
    prompt, prompt_from = prompt_source.settle(source, params.prompt, image, writer, model.family.name, log)
    if prompt != params.prompt:
        params = replace(params, prompt=prompt)
        request = replace(request, prompt=prompt)
    names = params.recipes if params.recipes is not None else settings.output.default_recipes
    recipes = {name: table[name] for name in names}
    log.info(
        "job started",
        image=image_path.name,
        sidecar=sidecar_path.name if sidecar_path else None,
        last_image=last_path.name if last_path else None,
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
        prompt_from=prompt_from,
        prompt=printable(prompt),  # a prompt's line breaks and tabs would break the log's lines
    )
    record = JobRecord(
        job=job.name,
        inputs=Inputs(
            image=image_path.name,
            sidecar=sidecar_path.name if sidecar_path else None,
            last_image=last_path.name if last_path else None,
        ),
        prompt=params.prompt,
        user_prompt=source.user_prompt,
        prompt_from=prompt_from,
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
