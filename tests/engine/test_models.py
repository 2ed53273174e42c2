"""LoRA adapters, quantization, per-model defaults, Wan 2.2 and HunyuanVideo-I2V, on the tiny builds (CPU).

Adapters are random-weight LoRA files made in code in peft's layout, once per session
(``random_lora``), and loaded through diffusers and peft the way the daemon loads a configured one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import helpers
import numpy as np
import pytest
from helpers import digest, png_bytes

from daemon.config import Settings
from daemon.engine.adapters import AdapterSpec
from daemon.engine.detect import family_from_index
from daemon.engine.families import FAMILIES, HUNYUAN_I2V, LTX2, WAN22_A14B, WAN22_TI2V, get_family
from daemon.engine.generator import load_generator
from daemon.engine.options import EngineOptions
from daemon.engine.runner import DiffusersGenerator
from daemon.job.prepare import effective
from daemon.job.sidecar import JobParams

# Tiny builds whose pipelines take LoRA adapters in diffusers -> (width, height, frames) that suit them.
LORA_CASES = {
    "tiny-ltx": (64, 32, 9),
    "tiny-wan": (32, 16, 5),
    "tiny-wan22": (32, 16, 5),
    "tiny-wan22-ti2v": (64, 32, 5),
    "tiny-cogvideox": (32, 16, 9),
    "tiny-hunyuan-i2v": (64, 32, 5),
    "tiny-hunyuan-i2v-33ch": (64, 32, 5),
    "tiny-ltx2": (64, 32, 9),
}


def _load(model_id: str, cache: Path, **options: Any) -> DiffusersGenerator:
    gen = load_generator(
        model_id, revision=None, device="cpu", dtype="auto", cache_dir=cache, options=EngineOptions(**options)
    )
    assert isinstance(gen, DiffusersGenerator)
    return gen


def _request(model_id: str, **changes: Any) -> Any:
    width, height, frames = LORA_CASES[model_id]
    fields: dict[str, Any] = {"num_frames": frames, "steps": 2, "guidance_scale": 3.5, **changes}
    return helpers.request(width, height, **fields)


def _frames(gen: DiffusersGenerator, req: Any) -> np.ndarray:
    return gen.generate(req).frames


# -- LoRA adapters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", list(LORA_CASES))
def test_a_random_lora_changes_the_frames_at_scale_1_and_not_at_0(
    tiny_families_dir: Path, random_lora: Any, model_id: str
) -> None:
    lora = str(random_lora(model_id))
    gen = _load(
        model_id, tiny_families_dir, loras=(AdapterSpec("one", lora), AdapterSpec("zero", lora, scale=0.0))
    )
    req = _request(model_id)
    plain = _frames(gen, req)
    at_one = _frames(gen, replace(req, loras=("one",)))
    assert gen.last_run is not None and gen.last_run["loras"] == ["one"]
    at_zero = _frames(gen, replace(req, loras=("zero",)))
    assert not np.array_equal(at_one, plain)
    assert np.array_equal(at_zero, plain)
    assert gen.engine["loras"] == {"fused": [], "switchable": ["one", "zero"]}
    # Every denoiser holds the adapter: Wan 2.2 A14B's two experts alike.
    listed = gen._pipe.get_list_adapters()
    for denoiser in gen.family.all_denoisers:
        if getattr(gen._pipe, denoiser, None) is not None:
            assert listed[denoiser] == ["one", "zero"], denoiser
    assert gen.family.all_denoisers == (
        ("transformer", "transformer_2") if model_id == "tiny-wan22" else ("transformer",)
    )


def test_jobs_with_other_adapters_give_what_fresh_runs_give(
    tiny_families_dir: Path, random_lora: Any
) -> None:
    """Job A with adapter a, job B with b, job C with none, on one warm model: each makes the frames
    a freshly loaded model makes for it alone (nothing leaks from one job into the next)."""
    model_id = "tiny-wan22"
    specs = (AdapterSpec("a", str(random_lora(model_id, 1))), AdapterSpec("b", str(random_lora(model_id, 2))))
    warm = _load(model_id, tiny_families_dir, loras=specs)
    modules = (warm._pipe.transformer, warm._pipe.transformer_2)
    req = _request(model_id)
    jobs = [("a",), ("b",), ()]
    made = [_frames(warm, replace(req, loras=picked)) for picked in jobs]
    assert (warm._pipe.transformer, warm._pipe.transformer_2) == modules  # switched, not reloaded
    for picked, frames in zip(jobs, made, strict=True):
        fresh = _load(model_id, tiny_families_dir, loras=specs)
        assert np.array_equal(_frames(fresh, replace(req, loras=picked)), frames), picked
    assert not np.array_equal(made[0], made[1])
    assert np.array_equal(_frames(_load(model_id, tiny_families_dir), req), made[2])  # as if never loaded


def test_an_always_on_adapter_is_fused_once_at_load(tiny_families_dir: Path, random_lora: Any) -> None:
    model_id = "tiny-wan22"
    spec = AdapterSpec("a", str(random_lora(model_id, 1)))
    fused = _load(model_id, tiny_families_dir, loras=(spec,), always_on=("a",))
    switched = _load(model_id, tiny_families_dir, loras=(spec,))
    assert fused.engine["loras"] == {"fused": ["a"], "switchable": []}
    # No LoRA layers left in either expert: the fused adapter costs nothing per step.
    for denoiser in (fused._pipe.transformer, fused._pipe.transformer_2):
        assert not [name for name, _ in denoiser.named_modules() if "lora_" in name]
    req = _request(model_id)
    on = _frames(fused, req)
    assert fused.last_run is not None and fused.last_run["loras"] == ["a"]
    # The same as the adapter switched on per job (fusing sums in another order: a level at most).
    assert np.abs(on.astype(int) - _frames(switched, replace(req, loras=("a",)))).max() <= 1
    assert not np.array_equal(on, _frames(switched, req))


def test_an_adapter_that_does_not_fit_stops_the_start_with_one_line(
    tiny_families_dir: Path, random_lora: Any
) -> None:
    ltx_lora = str(random_lora("tiny-ltx"))
    with pytest.raises(RuntimeError) as made_for_another:
        _load("tiny-wan22", tiny_families_dir, loras=(AdapterSpec("ltx", ltx_lora),))
    with pytest.raises(RuntimeError) as no_loader:
        _load("tiny", tiny_families_dir, loras=(AdapterSpec("ltx", ltx_lora),))
    with pytest.raises(RuntimeError) as missing:
        _load(
            "tiny-wan",
            tiny_families_dir,
            loras=(AdapterSpec("gone", str(tiny_families_dir / "gone.safetensors")),),
        )
    for exc, expected in (
        (made_for_another, "LoRA adapter 'ltx' ("),
        (made_for_another, "does not fit this model: the layers it adapts are not in this model"),
        (no_loader, "I2VGen-XL takes no LoRA adapters"),
        # Every family that takes them, from the families table (not a list kept by hand).
        *((no_loader, f.label) for f in FAMILIES.values() if f.takes_lora),
        (missing, "LoRA adapter 'gone'"),
        (missing, "no such file; fix [loras.gone] id"),
    ):
        assert expected in str(exc.value)
        assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_the_documented_way_to_try_adapters_without_a_gpu(tmp_path: Path, tiny_families_dir: Path) -> None:
    # docs/models.md: make an adapter for a tiny build with the script, name it in the config,
    # pick it in a prompt file; the job says it ran with it.
    made = subprocess.run(
        [sys.executable, "scripts/tiny_lora.py", "tiny-wan", str(tmp_path / "loras" / "try.safetensors")],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0 and made.stderr == "", made.stderr
    assert made.stdout.strip() == str(tmp_path / "loras" / "try.safetensors")
    config = helpers.write_config(
        tmp_path, "tiny-wan", {"num_frames": 5, "steps": 2}, **{"loras.try": {"id": "loras/try.safetensors"}}
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "boat.png").write_bytes(png_bytes(seed=1, size=(96, 64)))
    (inbox / "boat.toml").write_text('prompt = "a paper boat drifts"\nloras = ["try"]\n')
    done = _run_once(config, tiny_families_dir)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    (out,) = (tmp_path / "outputs").glob("boat_*/")
    assert json.loads((out / f"{out.name}.json").read_text())["parameters"]["loras"] == ["try"]


# -- quantization -------------------------------------------------------------------------------------


def test_int8_quantization_runs_on_the_cpu_beside_adapters(tiny_families_dir: Path, random_lora: Any) -> None:
    from torchao.quantization import Int8Tensor

    model_id = "tiny-wan22"
    spec = AdapterSpec("a", str(random_lora(model_id, 1)))
    quantized = _load(model_id, tiny_families_dir, quantize="int8", loras=(spec,))
    assert quantized.engine["quantize"] == "int8:weight_only"
    for denoiser in (quantized._pipe.transformer, quantized._pipe.transformer_2):
        to_q = denoiser.blocks[0].attn1.to_q
        assert isinstance(to_q.base_layer.weight, Int8Tensor)  # the model's own weights: int8
        assert not isinstance(to_q.lora_A["a"].weight, Int8Tensor)  # the adapter's: full precision
    req = _request(model_id)
    plain = _frames(_load(model_id, tiny_families_dir), req)
    q_plain = _frames(quantized, req)
    q_lora = _frames(quantized, replace(req, loras=("a",)))
    assert q_plain.shape == plain.shape and q_plain.std() > 0
    assert not np.array_equal(q_plain, plain)  # quantized for real
    assert not np.array_equal(q_lora, q_plain)  # the adapter still applies


def test_fp8_without_an_fp8_gpu_stops_the_start_with_one_line(tiny_families_dir: Path) -> None:
    with pytest.raises(RuntimeError) as exc:
        _load("tiny-wan", tiny_families_dir, quantize="fp8")
    message = str(exc.value)
    assert "model.quantize = 'fp8' needs a CUDA GPU with FP8 support (compute capability 8.9" in message
    assert "runs on the CPU" in message and "\n" not in message


# -- per-model defaults -------------------------------------------------------------------------------

# Published values (see the comments in daemon/engine/families.py for the source of each).
PUBLISHED = {
    "i2vgenxl": (50, 9.0),
    "svd": (25, 3.0),
    "ltx": (50, 3.0),
    "wan": (40, 5.0),
    "wan_flf2v": (50, 5.5),
    "wan22_a14b": (40, 3.5),
    "wan22_ti2v": (50, 5.0),
    "cogvideox": (50, 6.0),
    "hunyuan_i2v": (50, 6.0),
    "ltx2": (30, 3.0),
    "hunyuan15_i2v": (50, 6.0),
}


def _params(**changes: Any) -> JobParams:
    fields: dict[str, Any] = dict(
        prompt="x",
        negative_prompt="",
        resolution="512p",
        num_frames=5,
        fps=8,
        steps=None,
        guidance_scale=None,
        seed=None,
        recipes=None,
    )
    fields.update(changes)
    return JobParams(**fields)


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_steps_and_guidance_set_nowhere_are_the_familys_published_ones(family: str) -> None:
    fam = get_family(family)
    assert set(PUBLISHED) == set(FAMILIES)
    eff = effective(_params(), Settings(), fam)
    assert (eff.steps, eff.steps_from, eff.guidance_scale, eff.guidance_scale_from) == (
        *PUBLISHED[family][:1],
        "model",
        PUBLISHED[family][1],
        "model",
    )


def test_sidecar_over_adapter_over_config_over_model() -> None:
    fam = get_family("wan")
    fast = {"id": "/x/fast.safetensors", "steps": 4, "guidance_scale": 1.0}
    style = {"id": "/x/style.safetensors"}
    settings = Settings(generation={"steps": 30}, loras={"fast": fast, "style": style})
    eff = effective(_params(steps=30), settings, fam)
    assert (eff.steps, eff.steps_from, eff.guidance_scale, eff.guidance_scale_from) == (
        30,
        "config",
        5.0,
        "model",
    )
    eff = effective(_params(steps=30, loras=("style", "fast")), settings, fam)
    assert (eff.steps, eff.steps_from, eff.guidance_scale, eff.guidance_scale_from) == (
        4,
        "adapter",
        1.0,
        "adapter",
    )
    assert eff.loras == ("style", "fast")
    eff = effective(_params(steps=8, loras=("fast",), from_sidecar=frozenset({"steps"})), settings, fam)
    assert (eff.steps, eff.steps_from, eff.guidance_scale, eff.guidance_scale_from) == (
        8,
        "sidecar",
        1.0,
        "adapter",
    )
    # An always-on distilled adapter sets them for every job.
    always = Settings(model={"loras": ["fast"]}, loras={"fast": fast})
    eff = effective(_params(), always, fam)
    assert (eff.steps, eff.steps_from, eff.loras) == (4, "adapter", ("fast",))


def test_wan_generations_are_told_apart_by_their_model_index() -> None:
    base = {"_class_name": "WanImageToVideoPipeline"}
    assert family_from_index(base) == "wan"
    assert (
        family_from_index({**base, "boundary_ratio": 0.9, "transformer_2": ["diffusers", "X"]}) == WAN22_A14B
    )
    assert family_from_index({**base, "expand_timesteps": True, "boundary_ratio": None}) == WAN22_TI2V
    assert family_from_index({"_class_name": "WanPipeline", "expand_timesteps": True}) == WAN22_TI2V


# -- Wan 2.2 and HunyuanVideo-I2V end to end through `i2vd run --once` ----------------------------------


def _run_once(config: Path, cache: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--once", "--config", str(config)],
        # The session's model cache, so the tiny build is made once.
        env={**env, "HF_HUB_OFFLINE": "1", "I2VD_MODEL__CACHE_DIR": str(cache)},
        capture_output=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_id", "family", "generation", "plain_steps", "plain_guidance"),
    [
        # Steps from the config, guidance the model's published 3.5.
        ("tiny-wan22", WAN22_A14B, {"steps": 2}, (2, "config"), (3.5, "model")),
        # Both the model's published values (50 steps: the tiny TI2V makes them in seconds).
        ("tiny-wan22-ti2v", WAN22_TI2V, {}, (50, "model"), (5.0, "model")),
        # HunyuanVideo-I2V: guidance 6.0 as published (distilled into the model).
        ("tiny-hunyuan-i2v", HUNYUAN_I2V, {"steps": 2}, (2, "config"), (6.0, "model")),
        # LTX-2: 8k+1 frames; guidance its published 3.0; the fast adapter's 1.0 turns all guidance off.
        ("tiny-ltx2", LTX2, {"steps": 2, "num_frames": 9}, (2, "config"), (3.0, "model")),
    ],
)
def test_new_families_end_to_end_with_a_distilled_adapter_picked_by_name(
    tmp_path: Path,
    tiny_families_dir: Path,
    random_lora: Any,
    model_id: str,
    family: str,
    generation: dict[str, object],
    plain_steps: tuple[int, str],
    plain_guidance: tuple[float, str],
) -> None:
    lora = str(random_lora(model_id))
    frames = int(generation.get("num_frames", 5))  # type: ignore[call-overload]
    config = helpers.write_config(
        tmp_path,
        model_id,
        {"num_frames": 5, "fps": 8, **generation},
        **{"loras.fast": {"id": lora, "steps": 3, "guidance_scale": 1.0}},
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "plain.png").write_bytes(png_bytes(seed=1, size=(96, 64)))
    (inbox / "plain.txt").write_text("a paper boat drifts")
    (inbox / "fast.png").write_bytes(png_bytes(seed=2, size=(96, 64)))
    (inbox / "fast.toml").write_text('prompt = "a paper boat drifts"\nloras = ["fast"]\nseed = 5\n')
    (inbox / "typo.png").write_bytes(png_bytes(seed=3, size=(96, 64)))
    (inbox / "typo.toml").write_text('prompt = "a paper boat drifts"\nloras = ["fats"]\n')
    originals = {p.name: digest(p) for p in inbox.iterdir()}

    done = _run_once(config, tiny_families_dir)
    assert done.returncode == 1, done.stderr.decode()[-3000:]  # the typo job failed; the others did not

    records = {}
    for name in ("plain", "fast"):
        (out,) = (tmp_path / "outputs").glob(f"{name}_*/")
        records[name] = info = json.loads((out / f"{out.name}.json").read_text())
        assert info["generation"]["family"] == family and info["generation"]["engine"]["family"] == family
        assert info["parameters"]["num_frames"] == frames
        with av.open(str(out / f"{out.name}.mp4")) as clip:
            assert sum(1 for _ in clip.decode(video=0)) == frames
            assert not clip.streams.audio  # LTX-2's sound is dropped: every clip is silent
        for ext in ("png", "txt" if name == "plain" else "toml"):
            (kept,) = (tmp_path / "done").glob(f"{name}_*/{name}.{ext}")
            assert digest(kept) == originals[f"{name}.{ext}"]
    plain, fast = records["plain"]["parameters"], records["fast"]["parameters"]
    assert (plain["steps"], plain["steps_from"]) == plain_steps
    assert (plain["guidance_scale"], plain["guidance_scale_from"]) == plain_guidance
    assert plain["loras"] is None and records["plain"]["generation"]["loras"] is None
    assert (fast["steps"], fast["steps_from"], fast["guidance_scale"], fast["guidance_scale_from"]) == (
        3,
        "adapter",
        1.0,
        "adapter",
    )
    assert fast["loras"] == ["fast"] and records["fast"]["generation"]["loras"] == ["fast"]
    assert records["fast"]["generation"]["engine"]["loras"] == {"fused": [], "switchable": ["fast"]}

    (failed,) = (tmp_path / "failed").glob("typo_*/")
    error = (failed / "error.txt").read_text()
    assert "there is no adapter called \"fats\" — did you mean 'fast'? Available: fast." in error
    assert digest(failed / "typo.png") == originals["typo.png"]


def test_generation_benchmark_runs_an_adapter_and_int8_on_a_tiny_wan22(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runpy

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_generate.py"
    bench = runpy.run_path(str(path), run_name="bench_generate")
    argv = [
        "--model",
        "tiny-wan22-ti2v",
        "--device",
        "cpu",
        "--resolution",
        "64p",
        "--frames",
        "5",
        "--steps",
        "2",
    ]
    assert bench["main"]([*argv, "--lora", "random", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "model     tiny-wan22-ti2v (built in code), LoRA random" in out
    assert "quantize=int8:weight_only" in out and "loras={'fused': ['bench'], 'switchable': []}" in out
    assert "job       64x64, 5 frames, 2 steps, guidance 5" in out  # the family's published guidance
    rows = {line[:36].strip(): line[36:].split() for line in out.splitlines() if line[36:].strip()}
    assert float(rows["i2vd, tuned settings"][0]) > 0
    assert "reference: RTX 4090 (see below)" not in rows  # an I2VGen-XL figure, not this model's


# -- configuration and fetch-model --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loras", "model", "expected"),
    [
        ({"x": {"id": "owner/repo"}}, {}, "the Hub adapter 'owner/repo' needs weight_name"),
        ({"x": {"id": "/srv/loras/x.bin"}}, {}, "a local adapter must be a .safetensors file"),
        ({"x": {"id": "not-a-hub-id"}}, {}, "neither a Hub id (owner/name) nor a local .safetensors file"),
        ({"x": {"id": "/a.safetensors", "steps": 0}}, {}, "loras.x.steps"),
        (
            {},
            {"loras": ["fast"]},
            "model.loras names fast, which no [loras.NAME] table defines (defined: none)",
        ),
        ({"x": {"id": "/a.safetensors"}}, {"quantize": "fp4"}, "model.quantize"),
    ],
)
def test_bad_adapter_and_quantize_settings_fail_at_load_naming_the_key(
    tmp_path: Path, loras: dict[str, Any], model: dict[str, Any], expected: str
) -> None:
    from daemon.config import ConfigError, load_settings

    lines = ["[model]", *(f"{k} = {json.dumps(v)}" for k, v in model.items())]
    for name, table in loras.items():
        lines += [f"[loras.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert expected in str(exc.value)


def test_fetch_model_checks_local_adapters_and_refuses_hub_ones_offline(
    tmp_path: Path, random_lora: Any
) -> None:
    from daemon.engine.fetch import fetch_adapters

    lora = random_lora("tiny-wan")
    assert fetch_adapters([AdapterSpec("a", str(lora))], cache_dir=tmp_path) == [lora]
    with pytest.raises(RuntimeError, match=r"LoRA adapter 'gone' .*no such file; fix \[loras\.gone\] id"):
        fetch_adapters([AdapterSpec("gone", str(tmp_path / "gone.safetensors"))], cache_dir=tmp_path)
    with pytest.raises(
        RuntimeError, match="HF_HUB_OFFLINE is set, so LoRA adapter 'hub'"
    ):  # conftest sets it
        fetch_adapters([AdapterSpec("hub", "owner/repo", "a.safetensors")], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    # A Hub adapter that was never fetched stops the start, naming the command.
    with pytest.raises(RuntimeError) as exc:
        _load("tiny-wan", tmp_path, loras=(AdapterSpec("hub", "owner/repo", "a.safetensors"),))
    assert "LoRA adapter 'hub' (owner/repo) is not in the model cache: run `i2vd fetch-model`" in str(
        exc.value
    )


def test_hunyuan_i2v_checkpoints_are_called_as_each_is_published(tiny_families_dir: Path) -> None:
    """The distilled-guidance checkpoint takes guidance as an input, one pass per step; the 33-channel
    one takes classifier-free guidance, and its pipeline's 4 dropped frames are asked for on top."""
    family = get_family(HUNYUAN_I2V)
    req = _request("tiny-hunyuan-i2v", guidance_scale=6.0)
    common = dict(image=req.image, width=64, height=32, num_frames=5, generator=None, decode_chunk_size=1)
    for model_id, expected in (
        ("tiny-hunyuan-i2v", {"guidance_scale": 6.0, "true_cfg_scale": 1.0, "num_frames": 5}),
        ("tiny-hunyuan-i2v-33ch", {"guidance_scale": 1.0, "true_cfg_scale": 6.0, "num_frames": 9}),
    ):
        gen = _load(model_id, tiny_families_dir)
        kwargs = family.call_kwargs(req, **common, on_step=None, pipe=gen._pipe)
        assert {k: kwargs[k] for k in expected} == expected, model_id
        assert gen.generate(req).frames.shape == (5, 32, 64, 3)


def test_ltx2_takes_the_clip_fps_drops_its_sound_and_runs_unguided_at_guidance_1(
    tiny_families_dir: Path,
) -> None:
    """LTX-2 at guidance 3: classifier-free guidance (one batched pass) plus spatio-temporal and modality
    guidance, three transformer passes per step. At guidance 1 (distilled): one. The clip is the video
    alone, timed at the job's fps; the sound the pipeline made is not in the result."""
    gen = _load("tiny-ltx2", tiny_families_dir)
    passes: list[int] = []
    handle = gen._pipe.transformer.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        for guidance, per_step in ((3.0, 3), (1.0, 1)):
            passes.clear()
            req = _request("tiny-ltx2", guidance_scale=guidance, fps=12)
            result = gen.generate(req)
            assert result.frames.shape == (9, 32, 64, 3)
            assert len(passes) == per_step * req.steps, guidance
    finally:
        handle.remove()
    kwargs = gen.family.call_kwargs(
        req,
        image=req.image,
        width=64,
        height=32,
        num_frames=9,
        generator=None,
        decode_chunk_size=1,
        on_step=None,
        pipe=gen._pipe,
    )
    assert kwargs["frame_rate"] == 12.0
    # The tiny transformer has no cross-attention modulation, as LTX-2.0: called the legacy way.
    assert (kwargs["use_cross_timestep"], kwargs["spatio_temporal_guidance_blocks"]) == (False, [29])
    assert (kwargs["audio_guidance_scale"], kwargs["stg_scale"], kwargs["modality_scale"]) == (1.0, 0.0, 1.0)
    assert "audio" not in gen.last_run and not hasattr(result, "audio")


# -- HunyuanVideo 1.5 ---------------------------------------------------------------------------------


def test_hunyuan15_makes_the_size_asked_for_and_takes_guidance_through_its_guider(
    tiny_families_dir: Path, random_lora: Any
) -> None:
    """Upstream's pipeline picks its own size from the image and reads guidance from its guider
    component; ours makes the size the job asks for and sets the job's guidance on the guider for
    that call only: two transformer passes a step, one at guidance 1.0."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline

    gen = _load("tiny-hunyuan15-i2v", tiny_families_dir)
    pipe = gen._pipe
    req = helpers.request(64, 32, num_frames=5, steps=2, guidance_scale=6.0)
    upstream = HunyuanVideo15ImageToVideoPipeline(**pipe.components)
    upstream.set_progress_bar_config(disable=True)
    picked = upstream(image=req.image, prompt=req.prompt, num_frames=5, num_inference_steps=1).frames
    assert picked.shape[2:4] == (48, 80)  # its bucket for 2:1 at the tiny's target_size 64, not 32x64
    passes: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        made = {}
        for guidance, expected in ((6.0, 4), (1.0, 2)):
            passes.clear()
            made[guidance] = gen.generate(replace(req, guidance_scale=guidance)).frames
            assert made[guidance].shape == (5, 32, 64, 3)
            assert len(passes) == expected, guidance
    finally:
        hook.remove()
    assert not np.array_equal(made[6.0], made[1.0])
    assert pipe.guider.guidance_scale == 6.0  # the checkpoint's own value is back after each job
    lora = AdapterSpec("a", str(random_lora("tiny-wan")))
    with pytest.raises(RuntimeError) as exc:
        _load("tiny-hunyuan15-i2v", tiny_families_dir, loras=(lora,))
    assert "HunyuanVideo 1.5 takes no LoRA adapters (diffusers has no LoRA loader for it)" in str(exc.value)


@pytest.mark.slow
def test_hunyuan15_end_to_end_at_the_size_asked_for_with_its_published_guidance(
    tmp_path: Path, tiny_families_dir: Path
) -> None:
    config = helpers.write_config(tmp_path, "tiny-hunyuan15-i2v", {"num_frames": 5, "fps": 8, "steps": 2})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    prompt = 'prompt = "a paper boat drifts past a sign that reads \\"OPEN\\""\n'
    (inbox / "plain.png").write_bytes(png_bytes(seed=1, size=(96, 64)))
    (inbox / "plain.txt").write_text("a paper boat drifts")
    (inbox / "one.png").write_bytes(png_bytes(seed=2, size=(96, 64)))
    (inbox / "one.toml").write_text(prompt + "guidance_scale = 1.0\n")
    (inbox / "eight.png").write_bytes(png_bytes(seed=3, size=(96, 64)))
    (inbox / "eight.toml").write_text(prompt + "num_frames = 8\n")
    originals = {p.name: digest(p) for p in inbox.iterdir()}

    done = _run_once(config, tiny_families_dir)
    assert done.returncode == 1, done.stderr.decode()[-3000:]  # the 8-frame job failed; the others did not

    records = {}
    for name in ("plain", "one"):
        (out,) = (tmp_path / "outputs").glob(f"{name}_*/")
        records[name] = info = json.loads((out / f"{out.name}.json").read_text())
        assert info["generation"]["family"] == "hunyuan15_i2v"
        # 3:2 at the shipped 512p: the size asked for, not the pipeline's own pick from the image.
        clip = helpers.probe(out / f"{out.name}.mp4")
        assert (clip["width"], clip["height"], clip["frames"]) == (768, 512, 5)
        assert (info["generation"]["width"], info["generation"]["height"]) == (768, 512)
    plain, one = records["plain"]["parameters"], records["one"]["parameters"]
    assert (plain["steps"], plain["steps_from"]) == (2, "config")
    assert (plain["guidance_scale"], plain["guidance_scale_from"]) == (6.0, "model")
    assert (one["guidance_scale"], one["guidance_scale_from"]) == (1.0, "sidecar")
    for kept in ("plain.png", "plain.txt", "one.png", "one.toml"):
        (path,) = (tmp_path / "done").glob(f"*/{kept}")
        assert digest(path) == originals[kept]

    (failed,) = (tmp_path / "failed").glob("eight_*/")
    error = (failed / "error.txt").read_text()
    assert "num_frames = 8 does not suit HunyuanVideo 1.5" in error and "4k+1 frames (5, 9, 13, 17" in error
    assert digest(failed / "eight.png") == originals["eight.png"]
