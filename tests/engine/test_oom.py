"""Out of memory: the ladder, its record in JOB.json, and the advice when nothing fits.

A CUDA out-of-memory error cannot happen on a CPU, so the real tiny pipeline is made to raise a
genuine ``torch.OutOfMemoryError`` from inside its UNet / VAE decoder by ``daemon.engine.oom.InjectOOM``.
The other families' ladders and decode rescues are in tests/test_families_engine.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import helpers
import numpy as np
import pytest
import structlog
import torch
from PIL import Image

from daemon import logs
from daemon.config import Settings
from daemon.engine.families import get_family
from daemon.engine.generator import load_generator
from daemon.engine.interface import GenerationRequest
from daemon.engine.oom import ENV_VAR, InjectOOM, Ladder, Setting, exhausted_message, is_out_of_memory
from daemon.engine.runner import DiffusersGenerator
from daemon.engine.stub import StubGenerator
from daemon.errors import GenerationError
from daemon.folders.jobs import Job
from daemon.job.finish import Generated, describe
from daemon.job.prepare import prepare
from daemon.sizing import fit_to


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> DiffusersGenerator:
    gen = load_generator(
        str(tiny_model_dir), revision=None, device="cpu", dtype="auto", cache_dir=tiny_model_dir
    )
    assert isinstance(gen, DiffusersGenerator)
    return gen


@pytest.fixture
def injected(tiny: DiffusersGenerator) -> Iterator[DiffusersGenerator]:
    """The module's generator, its injector removed again after each test."""
    yield tiny
    tiny.inject_oom = None


def _request(width: int, height: int, **changes: object) -> GenerationRequest:
    # One denoising step and two frames: the ladder, not the model, is what is tested here.
    return helpers.request(width, height, **{"num_frames": 2, "steps": 1, **changes})  # type: ignore[no-any-return]


# -- the plan, without a model --------------------------------------------------------------------


def test_ladder_goes_down_resolution_then_frames_then_offload() -> None:
    ladder = Ladder()
    requested = cur = Setting(1024, 768, 16, "none")
    seen = []
    while (step := ladder.next(cur, requested=requested, multiple=64, can_offload=True)) is not None:
        rung, cur = step
        seen.append((rung, cur.width, cur.height, cur.num_frames, cur.offload))
    assert seen == [
        ("lower_resolution", 832, 640, 16, "none"),  # 4:3 kept, multiples of 64
        ("lower_resolution", 704, 512, 16, "none"),
        ("lower_resolution", 512, 384, 16, "none"),
        ("fewer_frames", 512, 384, 8, "none"),
        ("cpu_offload", 512, 384, 8, "model"),
    ]
    # A 1024p job starts one rung higher; on a CPU there is no offload rung; a custom order is kept.
    big = Setting(1024, 1024, 16, "none")
    assert ladder.next(big, requested=big, multiple=64, can_offload=False) == (
        "lower_resolution",
        Setting(768, 768, 16, "none"),
    )
    small = Setting(384, 384, 8, "none")
    assert ladder.next(small, requested=small, multiple=64, can_offload=False) is None
    frames_first = Ladder(rungs=("fewer_frames", "lower_resolution"), min_frames=2)
    assert frames_first.next(big, requested=big, multiple=64, can_offload=True) == (
        "fewer_frames",
        Setting(1024, 1024, 8, "none"),
    )
    with pytest.raises(ValueError, match="unknown oom_ladder step"):
        Ladder(rungs=("smaller",))


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 bytes"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocation failure


def test_injector_from_the_environment() -> None:
    inj = InjectOOM.from_env({ENV_VAR: "above=4000000, decode_above=4096"})
    assert inj is not None and (inj.above, inj.decode_above) == (4_000_000, 4096)
    bare = InjectOOM.from_env({ENV_VAR: "123"})
    assert bare is not None and (bare.above, bare.decode_above) == (123, None)
    assert InjectOOM.from_env({ENV_VAR: " "}) is None and InjectOOM.from_env({}) is None
    with pytest.raises(ValueError, match=ENV_VAR):
        InjectOOM.from_env({ENV_VAR: "above=lots"})


def test_exhausted_advice_names_what_to_lower() -> None:
    requested = Setting(1024, 768, 16, "none")
    text = exhausted_message([requested, Setting(512, 384, 8, "model")], on_gpu=True, requested=requested)
    assert text.startswith("The GPU ran out of memory")
    assert "1024x768 with 16 frames; 512x384 with 8 frames (model offload)" in text
    assert 'resolution = "512p"' in text and "num_frames = 4" in text and "model.offload" in text
    small = Setting(384, 384, 2, "none")
    cpu = exhausted_message([small], on_gpu=False, requested=small)
    assert cpu.startswith("The computer") and "resolution" not in cpu and "already as small" in cpu


@pytest.mark.parametrize(
    ("family", "start", "expected"),
    [
        ("wan", 81, [37, 17, 9]),  # 4k+1, stopping at oom_min_frames (8): 9 is the last
        ("ltx", 97, [41, 17, 9]),  # 8k+1
        ("i2vgenxl", 16, [8]),  # any count, halved down to 8
    ],
)
def test_fewer_frames_are_always_a_count_the_family_takes(
    family: str, start: int, expected: list[int]
) -> None:
    fam = get_family(family)
    ladder = Ladder(rungs=("fewer_frames",))
    cur = requested = Setting(512, 512, start, "none")
    seen = []
    while step := ladder.next(
        cur, requested=requested, multiple=32, can_offload=False, fit_frames=fam.fit_frames
    ):
        cur = step[1]
        seen.append(cur.num_frames)
    assert seen == expected and all(fam.frames_ok(n) for n in seen)
    # The advice in error.txt suggests a count the family takes too.
    text = exhausted_message([cur], on_gpu=True, requested=requested, fit_frames=fam.fit_frames)
    assert f"num_frames = {fam.fit_frames(max(2, cur.num_frames // 2))}" in text


# -- on the real tiny pipeline --------------------------------------------------------------------


def _claimed_job(tmp_path: Path, image: Image.Image, sidecar: dict[str, object]) -> Job:
    name = "harbour_20250101_120000"
    job = Job(
        name=name,
        stem="harbour",
        rel_dir=Path("."),
        dir=tmp_path / "claimed" / name,
        files=["harbour.png", "harbour.json"],
        claimed_at=datetime.now().astimezone(),
    )
    job.inputs.mkdir(parents=True)
    job.out.mkdir()
    image.save(job.inputs / "harbour.png")
    (job.inputs / "harbour.json").write_text(json.dumps(sidecar))
    return job


def test_a_picture_smaller_than_the_clip_is_fitted_where_the_frames_are_made(tmp_path: Path) -> None:
    # Upscaling on the coordinator was most of its CPU per job for small pictures, and 64 times the
    # bytes to send to a worker: such a picture travels as it came, and the frames are the same.
    gen = StubGenerator()
    rng = np.random.default_rng(3)
    sidecar = {"prompt": "boats rock", "resolution": "512p", "num_frames": 2, "steps": 1, "seed": 7}
    small = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    prepared = prepare(
        _claimed_job(tmp_path / "small", small, sidecar),
        Settings(),
        gen.info,
        logs.get(),
        queued_at=datetime.now().astimezone(),
    )
    req = prepared.request
    assert (req.width, req.height) == (768, 512) and req.image.size == (96, 64)
    made = gen.generate(req).frames
    assert made.shape == (2, 512, 768, 3)
    assert np.array_equal(made, gen.generate(replace(req, image=fit_to(small, 768, 512))).frames)
    # A picture larger than the clip is fitted at once: what travels is the smaller of the two.
    large = Image.fromarray(rng.integers(0, 256, (600, 900, 3), dtype=np.uint8))
    prepared = prepare(
        _claimed_job(tmp_path / "large", large, sidecar),
        Settings(),
        gen.info,
        logs.get(),
        queued_at=datetime.now().astimezone(),
    )
    assert prepared.request.image.size == (768, 512)


def test_job_at_768p_fails_twice_then_succeeds_at_512p_and_records_it(
    injected: DiffusersGenerator, tmp_path: Path
) -> None:
    gen = injected
    assert gen.size_multiple == 32
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    job = _claimed_job(
        tmp_path,
        photo,
        {"prompt": "boats rock", "resolution": "768p", "num_frames": 2, "steps": 1, "seed": 7},
    )
    # 4:3 at 768p is 1024x768, at 640p 864x640, at 512p 672x512: fail above 672*512*2 pixel-frames.
    gen.inject_oom = InjectOOM(above=672 * 512 * 2)
    log_path = job.out / f"{job.name}.log"
    logs.open_job_log(job.name, log_path)
    try:
        log = logs.get().bind(job=job.name)
        prepared = prepare(job, Settings(), gen.info, log, queued_at=datetime.now().astimezone())
        with structlog.contextvars.bound_contextvars(job=job.name):  # as the executor binds it
            result = gen.generate(prepared.request)
    finally:
        logs.close_job_log(job.name)
    described = describe(Generated(prepared, result, 1.0))

    assert gen.inject_oom.raised == 2
    assert result.frames.shape == (2, 512, 672, 3)
    record = described.generation
    assert record is not None
    tries = [
        (a["width"], a["height"], a["num_frames"], a["change"], a["outcome"]) for a in record["attempts"]
    ]
    assert tries == [
        (1024, 768, 2, None, "out_of_memory"),
        (864, 640, 2, "lower_resolution", "out_of_memory"),
        (672, 512, 2, "lower_resolution", "ok"),
    ]
    assert (record["width"], record["height"], record["num_frames"], record["offload"]) == (
        672,
        512,
        2,
        "none",
    )
    assert record["fallback"] is True and record["requested"] == {
        "width": 1024,
        "height": 768,
        "num_frames": 2,
    }
    params = described.parameters
    assert (params.resolution, params.width, params.height, params.num_frames) == (
        "512p",
        672,
        512,
        2,
    )
    job_log = log_path.read_text()
    assert job_log.count("out of memory; trying again with smaller settings") == 2
    assert "clip made with smaller settings" in job_log

    # The 512p try used the photo centre-cropped and resized (fit_to) once, from the original (a
    # picture smaller than the clip travels as it came): the very frames that a job asking for
    # 672x512 with that image gets. Same seed, same device: identical.
    gen.inject_oom = None
    assert prepared.request.image.size == photo.size
    direct = gen.generate(
        _request(
            672,
            512,
            image=fit_to(photo, 672, 512),
            prompt="boats rock",
            negative_prompt=prepared.params.negative_prompt,
            seed=7,
        )
    ).frames
    assert np.array_equal(result.frames, direct)


def test_exhausted_ladder_fails_the_job_with_advice_and_the_generator_recovers(
    injected: DiffusersGenerator,
) -> None:
    gen = injected
    gen.inject_oom = InjectOOM(above=0)  # nothing fits
    with pytest.raises(GenerationError) as failed:
        gen.generate(_request(1024, 768, num_frames=4))
    text = str(failed.value)
    assert "ran out of memory" in text and 'resolution = "512p"' in text and "num_frames = 2" in text
    assert (
        "1024x768 with 4 frames; 864x640 with 4 frames; 672x512 with 4 frames; 512x384 with 4 frames" in text
    )
    # 4 frames is already under oom_min_frames (8) and a CPU has no offload rung: 4 tries in all.
    assert gen.inject_oom.raised == 4
    assert gen.last_run is not None and gen.last_run["ok"] is False and len(gen.last_run["attempts"]) == 4

    # The injector's hooks are gone with it; the next job runs normally, the callback reset.
    injector, gen.inject_oom = gen.inject_oom, None
    assert gen.generate(_request(64, 64)).frames.shape == (2, 64, 64, 3)
    assert injector.raised == 4 and gen._pipe.step_callback is None
    assert gen.last_run is not None and gen.last_run["ok"] and not gen.last_run["fallback"]


def test_decode_out_of_memory_halves_the_chunk_without_denoising_again(injected: DiffusersGenerator) -> None:
    gen = injected
    req = _request(64, 64, num_frames=2, steps=2)
    normal = gen.generate(req).frames
    assert gen.last_run is not None and gen.last_run["decode_chunk_size"] == 2  # min(8, frames)
    # 64x64 is 8x8 latent pixels a frame: two frames at once (128) fail, one at a time (64) fits.
    gen.inject_oom = InjectOOM(decode_above=64)
    steps: list[int] = []
    frames = gen.generate(req, on_step=lambda i, n: steps.append(i)).frames
    assert gen.inject_oom.raised == 1
    assert steps == [1, 2]  # the denoising ran once
    run = gen.last_run
    assert run is not None and run["decode_chunk_size"] == 1 and len(run["attempts"]) == 1
    assert np.abs(frames.astype(int) - normal).max() <= 1  # the same clip, decoded one frame at a time


def test_other_errors_are_not_retried(injected: DiffusersGenerator) -> None:
    calls: list[int] = []

    def broken(i: int, n: int) -> None:
        calls.append(i)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="mat1"):
        injected.generate(_request(64, 64), on_step=broken)
    assert calls == [1]


def test_environment_variable_turns_the_injector_on(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "above=1")
    gen = load_generator(
        str(tiny_model_dir), revision=None, device="cpu", dtype="auto", cache_dir=tiny_model_dir
    )
    assert isinstance(gen, DiffusersGenerator)
    assert gen.inject_oom is not None and gen.inject_oom.above == 1
    with pytest.raises(GenerationError, match="ran out of memory"):
        gen.generate(_request(64, 64))
