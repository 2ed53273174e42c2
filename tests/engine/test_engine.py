"""One engine for every model family: options, caching, the out-of-memory ladder, the decode rescue,
warm-up and fixed-size models, on the tiny random-weight builds of each family (real diffusers
pipelines on the CPU). Out-of-memory errors are injected with ``daemon.engine.oom.InjectOOM``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import structlog
import torch

from daemon.engine.families import get_family
from daemon.engine.generator import load_generator
from daemon.engine.oom import InjectOOM, Ladder
from daemon.engine.options import EngineOptions
from daemon.engine.runner import DiffusersGenerator
from daemon.engine.tiny import registry as tiny_registry
from daemon.errors import GenerationError

# model id -> (width, height, frames): a small clip each family takes.
CLIPS = {
    "tiny-svd": (48, 32, 4),
    "tiny-ltx": (64, 32, 9),
    "tiny-wan": (32, 16, 5),
    "tiny-cogvideox": (32, 16, 9),
    "tiny-ltx2": (64, 32, 9),
    "tiny-hunyuan15-i2v": (64, 32, 5),
}
TRANSFORMERS = ["tiny-ltx", "tiny-wan", "tiny-cogvideox", "tiny-ltx2", "tiny-hunyuan15-i2v"]


@pytest.fixture(scope="module")
def cache(tiny_families_dir: Path) -> Path:
    return tiny_families_dir


def _load(folder: Path, model_id: str, **options: Any) -> DiffusersGenerator:
    gen = load_generator(
        model_id,
        revision=None,
        device="cpu",
        dtype="auto",
        cache_dir=folder,
        options=EngineOptions(**options),
    )
    assert isinstance(gen, DiffusersGenerator)
    return gen


@pytest.fixture(scope="module")
def plain(cache: Path) -> dict[str, DiffusersGenerator]:
    """One generator per family with the default options, shared by the module."""
    return {model_id: _load(cache, model_id) for model_id in CLIPS}


@pytest.fixture
def injected(plain: dict[str, DiffusersGenerator]) -> Iterator[dict[str, DiffusersGenerator]]:
    yield plain
    for gen in plain.values():
        gen.inject_oom = None


def _req(model_id: str, **changes: Any) -> Any:
    width, height, frames = CLIPS[model_id]
    fields = {"width": width, "height": height, "num_frames": frames, "guidance_scale": 3.0, **changes}
    return helpers.request(**fields)


# -- the out-of-memory ladder and the decode rescue, family by family ------------------------------


@pytest.mark.parametrize("model_id", list(CLIPS))
def test_every_family_walks_down_to_fewer_frames_it_can_take(
    injected: dict[str, DiffusersGenerator], model_id: str
) -> None:
    gen = injected[model_id]
    width, height, frames = CLIPS[model_id]
    gen.inject_oom = InjectOOM(above=width * height * frames - 1)  # the asked-for clip does not fit
    gen._ladder = Ladder(rungs=("fewer_frames",), min_frames=1)
    try:
        out = gen.generate(_req(model_id)).frames
    finally:
        gen._ladder = gen.options.ladder
    made = gen.family.fit_frames(frames // 2, at_least=1)
    assert gen.family.frames_ok(made) and made < frames
    assert out.shape == (made, height, width, 3)
    run = gen.last_run
    assert run is not None and run["ok"] and run["fallback"] and run["family"] == gen.family.name
    assert [(a["num_frames"], a["outcome"]) for a in run["attempts"]] == [
        (frames, "out_of_memory"),
        (made, "ok"),
    ]
    assert gen.inject_oom.raised == 1


def test_a_transformer_family_goes_down_in_resolution_keeping_its_multiple(
    injected: dict[str, DiffusersGenerator],
) -> None:
    gen = injected["tiny-wan"]
    gen.inject_oom = InjectOOM(above=48 * 32 * 5 - 1)
    gen._ladder = Ladder(rungs=("lower_resolution",), short_sides=(16,))
    try:
        out = gen.generate(_req("tiny-wan", width=48, height=32)).frames
    finally:
        gen._ladder = gen.options.ladder
    # 3:2 at a 16-pixel short side, in multiples of 16: 32x16 (24 rounds to 32).
    assert out.shape == (5, 16, 32, 3)
    assert gen.last_run is not None and gen.last_run["attempts"][1]["change"] == "lower_resolution"


def test_out_of_memory_at_every_rung_fails_with_frame_advice_the_family_takes(
    injected: dict[str, DiffusersGenerator],
) -> None:
    gen = injected["tiny-ltx"]
    gen.inject_oom = InjectOOM(above=0)
    with pytest.raises(GenerationError) as failed:
        gen.generate(_req("tiny-ltx", num_frames=17))
    # 17 -> 9 (oom_min_frames 8 rounded up to 8k+1), then nothing is left; the advice is 8k+1 too.
    assert "17 frames; 64x32 with 9 frames" in str(failed.value)
    assert "num_frames = 1" in str(failed.value)
    gen.inject_oom = None
    assert gen.generate(_req("tiny-ltx")).frames.shape == (9, 32, 64, 3)  # and the next job runs


def test_svd_decode_out_of_memory_decodes_fewer_frames_at_once(
    injected: dict[str, DiffusersGenerator],
) -> None:
    gen = injected["tiny-svd"]
    steps: list[int] = []
    # 48x32 is 6x4 = 24 latent pixels a frame: only one frame at a time fits.
    gen.inject_oom = InjectOOM(decode_above=24)
    out = gen.generate(_req("tiny-svd"), on_step=lambda i, n: steps.append(i)).frames
    assert out.shape == (4, 32, 48, 3) and steps == [1, 2]  # denoised once
    run = gen.last_run
    assert run is not None and run["decode_chunk_size"] == 1 and len(run["attempts"]) == 1
    assert gen.inject_oom.raised == 2  # 4 frames, then 2, then 1


# Wide clips, so that the VAE's tiles (256 to 720 pixels) split them; the thresholds sit between
# the largest decoder call untiled and tiled (measured on these builds).
WIDE = {
    "tiny-ltx": (1024, 32, 9, 600),
    "tiny-wan": (1024, 16, 5, 100),
    "tiny-cogvideox": (1024, 16, 9, 300),
    "tiny-ltx2": (1024, 32, 9, 48),
    "tiny-hunyuan15-i2v": (1024, 16, 5, 100),
}


@pytest.mark.parametrize("model_id", TRANSFORMERS)
def test_video_vae_decode_out_of_memory_is_rescued_by_tiling(
    injected: dict[str, DiffusersGenerator], model_id: str
) -> None:
    gen = injected[model_id]
    width, height, frames, limit = WIDE[model_id]
    gen.inject_oom = InjectOOM(decode_above=limit)
    steps: list[int] = []
    with structlog.testing.capture_logs() as logs:
        out = gen.generate(
            _req(model_id, width=width, height=height, num_frames=frames, steps=1),
            lambda i, n: steps.append(i),
        ).frames
    assert out.shape == (frames, height, width, 3) and steps == [1]
    run = gen.last_run
    assert run is not None and run["vae_tiling"] is True and len(run["attempts"]) == 1
    assert gen.inject_oom.raised >= 1
    assert any(e["event"].startswith("out of memory decoding the frames") for e in logs)
    assert gen._pipe.vae.use_tiling is False  # tiling was for that job only


# -- diffusers' caching methods on the transformer families -----------------------------------------


def _attention_work(gen: DiffusersGenerator, req: Any) -> int:
    """How many times the self-attention query projections of the denoiser ran for ``req``.

    A skipped block, a predicted step and a broadcast attention output all skip these (the caching
    hooks replace a module's forward, so hooks on the blocks themselves would still fire).
    """
    calls = [0]
    denoiser = getattr(gen._pipe, gen.family.denoiser)
    # HunyuanVideo 1.5 names them attn (its text refiner's too, which runs alike with and without a cache).
    queries = [m for name, m in denoiser.named_modules() if name.endswith(("attn1.to_q", "attn.to_q"))]
    assert queries
    handles = [q.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for q in queries]
    try:
        gen.generate(req)
    finally:
        for h in handles:
            h.remove()
    return calls[0]


CACHE_METHODS = {"first_block": {"cache_threshold": 1.0}, "pyramid": {}, "taylorseer": {}}


def _takes(model_id: str, method: str) -> bool:
    methods = get_family(tiny_registry.BUILDS[model_id].family).cache_methods
    return methods is None or method in methods


# LTX-2 takes TaylorSeer only, HunyuanVideo 1.5 no First Block Cache: the others stop the start (below).
CACHING = [
    (model_id, method, extra)
    for model_id in TRANSFORMERS
    for method, extra in CACHE_METHODS.items()
    if _takes(model_id, method)
]
REFUSED = [
    (model_id, method)
    for model_id in TRANSFORMERS
    for method in CACHE_METHODS
    if not _takes(model_id, method)
]


@pytest.mark.parametrize(("model_id", "method", "extra"), CACHING)
def test_caching_skips_work_and_is_reset_between_jobs(
    cache: Path, plain: dict[str, DiffusersGenerator], model_id: str, method: str, extra: dict[str, Any]
) -> None:
    gen = _load(cache, model_id, cache=method, **extra)
    assert gen.engine["cache"].startswith(method)
    req = _req(model_id, steps=6)
    reference = plain[model_id].generate(req).frames
    first = gen.generate(req).frames
    assert first.shape == reference.shape
    assert not np.array_equal(first, reference)  # the cache changed what was computed
    assert _attention_work(gen, req) < _attention_work(plain[model_id], req)

    def stop_at_step_3(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):  # a job cut short leaves the cache half-filled
        gen.generate(req, on_step=stop_at_step_3)
    assert np.array_equal(gen.generate(req).frames, first)  # which the next job must not see


def test_the_refused_caching_methods_are_those_of_ltx2_and_hunyuan15() -> None:
    assert REFUSED == [
        ("tiny-ltx2", "first_block"),
        ("tiny-ltx2", "pyramid"),
        ("tiny-hunyuan15-i2v", "first_block"),
    ]


@pytest.mark.parametrize(
    ("model_id", "method", "says"),
    [
        (
            "tiny-ltx2",
            "first_block",
            "does not work with LTX-2 in this diffusers; set model.cache = 'none' or 'taylorseer'.",
        ),
        (
            "tiny-ltx2",
            "pyramid",
            "does not work with LTX-2 in this diffusers; set model.cache = 'none' or 'taylorseer'.",
        ),
        (
            "tiny-hunyuan15-i2v",
            "first_block",
            "does not work with HunyuanVideo 1.5 in this diffusers; set"
            " model.cache = 'none' or 'pyramid' or 'taylorseer'.",
        ),
    ],
)
def test_a_caching_method_a_family_cannot_take_stops_the_start_with_one_line(
    cache: Path, model_id: str, method: str, says: str
) -> None:
    with pytest.raises(RuntimeError) as exc:
        _load(cache, model_id, cache=method)
    assert str(exc.value) == f"model.cache = {method!r} {says}"


def test_caching_on_a_unet_family_is_ignored_with_a_log_line(cache: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        gen = _load(cache, "tiny-svd", cache="first_block")
    assert gen.engine["cache"] is None
    assert any(e.get("option") == "model.cache" for e in logs)


# -- other options, warm-up, precision -------------------------------------------------------------


def test_options_on_a_transformer_family(cache: Path, plain: dict[str, DiffusersGenerator]) -> None:
    with structlog.testing.capture_logs() as logs:
        gen = _load(cache, "tiny-wan", attention="eager", vae_slicing=True, offload="group", compile=True)
    ignored = {e["option"] for e in logs if e["event"] == "model option ignored"}
    assert ignored == {"model.offload", "model.compile"}  # CUDA only
    assert gen.engine["attention"] == "sdpa_math"  # eager is SDPA's math kernel for these models
    assert gen.engine["vae_slicing"] is True and gen._pipe.vae.use_slicing
    assert gen.engine["decode_chunk_size"] is None  # the video VAEs decode the whole clip
    req = _req("tiny-wan")
    assert np.abs(gen.generate(req).frames.astype(int) - plain["tiny-wan"].generate(req).frames).max() <= 1
    with structlog.testing.capture_logs() as logs:
        svd = _load(cache, "tiny-svd", vae_tiling=True)
    assert svd.engine["vae_tiling"] is False  # SVD's temporal decoder cannot tile
    assert any(e.get("option") == "model.vae_tiling" for e in logs)


@pytest.mark.parametrize("model_id", list(CLIPS))
def test_warm_up_runs_each_family_at_a_frame_count_it_takes(
    plain: dict[str, DiffusersGenerator], model_id: str
) -> None:
    gen = plain[model_id]
    seen: list[int] = []
    decoder = gen._pipe.vae.decoder
    hook = decoder.register_forward_pre_hook(lambda _m, args: seen.append(1))
    try:
        assert gen.warm_up(short_side=32, num_frames=16, steps=1) > 0
    finally:
        hook.remove()
    assert seen and gen.last_run is None


def test_auto_precision_follows_the_family_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.engine.load import component_dtypes, resolve_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_dtype("auto", cpu, get_family("wan")) == torch.float32
    # torch.device("cuda") needs no GPU; whether the GPU does bfloat16 is all that is asked of CUDA.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", gpu, get_family("wan")) == torch.bfloat16
    assert resolve_dtype("auto", gpu, get_family("i2vgenxl")) == torch.float16
    assert resolve_dtype("float32", gpu, get_family("wan")) == torch.float32
    assert component_dtypes(get_family("wan"), torch.bfloat16, "auto", gpu) == {
        "default": torch.bfloat16,
        "vae": torch.float32,
        "image_encoder": torch.float32,
    }
    assert component_dtypes(get_family("wan"), torch.bfloat16, "bfloat16", gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a Turing card
    assert resolve_dtype("auto", gpu, get_family("ltx")) == torch.float16


def test_a_compiler_that_fails_at_the_warm_up_is_undone(cache: Path) -> None:
    gen = _load(cache, "tiny-ltx")

    def broken_backend(*_: object) -> None:  # stands in for a compiler that cannot build for this GPU
        raise RuntimeError("triton: no kernel for this device")

    denoiser = gen._pipe.transformer
    denoiser.compile_repeated_blocks(backend=broken_backend, dynamic=False)
    gen.engine["compile"] = "regional:default"  # as on a GPU
    with structlog.testing.capture_logs() as logs:
        assert gen.warm_up(short_side=32, num_frames=9, steps=1) > 0
    assert gen.engine["compile"] is False
    assert any(e["event"] == "torch.compile failed; the model runs without it" for e in logs)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in denoiser.modules())
    assert gen.generate(_req("tiny-ltx")).frames.shape == (9, 32, 64, 3)


# -- a model that makes one clip size only -----------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_cogvideox(plain: dict[str, DiffusersGenerator]) -> DiffusersGenerator:
    """CogVideoX 1.0's layout: rotary and learned position embeddings, so one clip size only."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    base = plain["tiny-cogvideox"]._pipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = CogVideoXTransformer3DModel(
            **{
                **base.transformer.config,
                "sample_width": 4,
                "sample_height": 2,
                "sample_frames": 9,
                "use_learned_positional_embeddings": True,
            }
        )
    pipe = CogVideoXImageToVideoPipeline(**{**base.components, "transformer": transformer})
    return DiffusersGenerator.from_pipeline(pipe, model_id="fixed", device="cpu")


def test_a_fixed_size_model_takes_only_its_size(fixed_cogvideox: DiffusersGenerator) -> None:
    gen = fixed_cogvideox
    assert gen.fixed_size == (32, 16)
    assert gen.generate(_req("tiny-cogvideox")).frames.shape == (9, 16, 32, 3)
    with pytest.raises(GenerationError, match="makes 32x16 clips only"):
        gen.generate(_req("tiny-cogvideox", width=64, height=32))
    assert "lower_resolution" not in gen._ladder.rungs  # no smaller size to fall back to
