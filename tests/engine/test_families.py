"""Model families besides I2VGen-XL (daemon/engine/families.py) on their tiny random-weight builds
(daemon/engine/tiny/): detection, the per-family checks, frames, seeds, SVD's missing prompt."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import numpy as np
import pytest
import structlog

from daemon.config_sections import ModelConfig
from daemon.engine.detect import detect_family, family_from_index
from daemon.engine.generator import load_generator
from daemon.engine.interface import GenerationRequest
from daemon.engine.runner import DiffusersGenerator
from daemon.engine.tiny.registry import BUILDS, MARKER, TINY_FAMILIES_VERSION, build_into, folder_name
from daemon.errors import GenerationError

# model id -> (family, width, height, frames that suit it, multiple)
CASES = {
    "tiny-svd": ("svd", 48, 32, 4, 16),
    "tiny-ltx": ("ltx", 64, 32, 9, 32),
    "tiny-wan": ("wan", 32, 16, 5, 16),
    "tiny-wan22": ("wan22_a14b", 32, 16, 5, 16),
    "tiny-wan22-ti2v": ("wan22_ti2v", 64, 32, 5, 32),
    "tiny-hunyuan-i2v": ("hunyuan_i2v", 64, 32, 5, 16),
    "tiny-hunyuan-i2v-33ch": ("hunyuan_i2v", 64, 32, 5, 16),
    "tiny-hunyuan15-i2v": ("hunyuan15_i2v", 64, 32, 5, 16),
    "tiny-cogvideox": ("cogvideox", 32, 16, 9, 16),
    "tiny-ltx2": ("ltx2", 64, 32, 9, 32),
}


def _request(width: int, height: int, num_frames: int, **changes: object) -> GenerationRequest:
    fields: dict[str, object] = {"num_frames": num_frames, "guidance_scale": 3.0, **changes}
    return helpers.request(width, height, **fields)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cache(tiny_families_dir: Path) -> Path:
    return tiny_families_dir


@pytest.fixture(scope="module")
def generators(cache: Path) -> dict[str, DiffusersGenerator]:
    gens = {}
    for model_id in CASES:
        gen = load_generator(model_id, revision=None, device="cpu", dtype="auto", cache_dir=cache)
        assert isinstance(gen, DiffusersGenerator)
        gens[model_id] = gen
    return gens


@pytest.mark.parametrize("model_id", list(CASES))
def test_tiny_family_makes_frames_of_the_exact_shape_and_is_seeded(
    generators: dict[str, DiffusersGenerator], model_id: str
) -> None:
    family, width, height, frames, multiple = CASES[model_id]
    gen = generators[model_id]
    assert (gen.family.name, gen.size_multiple, gen.device, gen.revision) == (
        family,
        multiple,
        "cpu",
        f"v{TINY_FAMILIES_VERSION}",
    )
    steps: list[tuple[int, int]] = []
    req = _request(width, height, frames)
    first = gen.generate(req, on_step=lambda done, total: steps.append((done, total))).frames
    assert first.dtype == np.uint8
    assert first.shape == (frames, height, width, 3)
    assert first.std() > 0
    assert steps == [(1, 2), (2, 2)]
    assert gen.last_run is not None and gen.last_run["ok"] and gen.last_run["family"] == family
    assert np.array_equal(gen.generate(req).frames, first)  # same seed, same frames
    assert not np.array_equal(gen.generate(_request(width, height, frames, seed=99)).frames, first)


def test_svd_says_it_takes_no_prompt(generators: dict[str, DiffusersGenerator]) -> None:
    gen = generators["tiny-svd"]
    _, width, height, frames, _ = CASES["tiny-svd"]
    with structlog.testing.capture_logs() as logs:
        gen.generate(_request(width, height, frames))
    assert gen.last_run is not None and gen.last_run["prompt_used"] is False
    assert any("takes no prompt" in entry["event"] for entry in logs)
    assert generators["tiny-ltx"].family.takes_prompt


@pytest.mark.parametrize(
    ("model_id", "changes", "key", "hint"),
    [
        ("tiny-ltx", {"num_frames": 16}, "num_frames", "8k+1"),
        ("tiny-wan", {"num_frames": 8}, "num_frames", "4k+1"),
        ("tiny-cogvideox", {"num_frames": 13}, "num_frames", "8k+1"),
        ("tiny-hunyuan15-i2v", {"num_frames": 8}, "num_frames", "4k+1"),
        ("tiny-hunyuan15-i2v", {"width": 40}, "width", "multiples of 16"),
        ("tiny-ltx", {"width": 48}, "width", "multiples of 32"),
        ("tiny-wan", {"height": 24}, "height", "multiples of 16"),
        ("tiny-svd", {"steps": 0}, "steps", "1 or more"),
        ("tiny-cogvideox", {"guidance_scale": -1.0}, "guidance_scale", "0 or more"),
        ("tiny-ltx2", {"num_frames": 12}, "num_frames", "8k+1 frames (9, 17, 25, 33, ..., e.g. 121)"),
        ("tiny-ltx2", {"height": 48}, "height", "multiples of 32"),
    ],
)
def test_bad_values_are_rejected_before_model_work(
    generators: dict[str, DiffusersGenerator],
    monkeypatch: pytest.MonkeyPatch,
    model_id: str,
    changes: dict[str, object],
    key: str,
    hint: str,
) -> None:
    gen = generators[model_id]
    _, width, height, frames, _ = CASES[model_id]
    fields: dict[str, object] = {"width": width, "height": height, "num_frames": frames, **changes}

    def no_model_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran")

    monkeypatch.setattr(gen, "_pipe", no_model_work)
    w, h, n = fields.pop("width"), fields.pop("height"), fields.pop("num_frames")
    req = _request(width, height, n, **fields)  # type: ignore[arg-type]
    if (w, h) != (width, height):  # the image always matches the clip size, as the daemon makes it
        req = _request(w, h, n, **fields)  # type: ignore[arg-type]
    with pytest.raises(GenerationError) as info:
        gen.generate(req)
    assert key in str(info.value) and hint in str(info.value)


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableVideoDiffusionPipeline", "svd"),
        ("LTXImageToVideoPipeline", "ltx"),
        ("WanImageToVideoPipeline", "wan"),
        ("CogVideoXImageToVideoPipeline", "cogvideox"),
        ("HunyuanVideo15ImageToVideoPipeline", "hunyuan15_i2v"),
        ("I2VGenXLPipeline", "i2vgenxl"),
        ("LTX2Pipeline", "ltx2"),
        ("LTX2ImageToVideoPipeline", "ltx2"),
    ],
)
def test_family_is_detected_from_model_index(tmp_path: Path, class_name: str, family: str) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}), encoding="utf-8")
    assert detect_family(str(tmp_path)) == family
    assert detect_family(str(tmp_path), family="wan") == "wan"  # [model] family overrides


def test_detection_edge_cases(tmp_path: Path, cache: Path, generators: dict[str, DiffusersGenerator]) -> None:
    for model_id, (family, *_) in CASES.items():  # the builds carry the real pipeline class names
        assert detect_family(str(cache / folder_name(model_id))) == family
        assert (cache / folder_name(model_id) / MARKER).is_file()
    assert detect_family(str(tmp_path)) == "i2vgenxl"  # no model_index.json: the default model
    with pytest.raises(ValueError, match="cannot run"):
        family_from_index({"_class_name": "StableDiffusionPipeline"})
    with pytest.raises(ValueError, match=r"model\.family"):
        detect_family(str(tmp_path), family="sora")
    # tiny-wan-flf2v makes clips between two frames only: tests/job/test_last_frame.py covers it.
    assert set(BUILDS) - {"tiny"} == set(CASES) | {"tiny-wan-flf2v"}


def test_load_generator_dispatches_by_family(cache: Path, generators: dict[str, DiffusersGenerator]) -> None:
    # A local folder of a non-I2VGen-XL model is detected and run by its family.
    gen = load_generator(
        str(cache / folder_name("tiny-svd")), revision=None, device="cpu", dtype="auto", cache_dir=cache
    )
    assert isinstance(gen, DiffusersGenerator) and gen.family.name == "svd" and gen.revision is None
    with pytest.raises(ValueError, match="is a svd model"):
        load_generator("tiny-svd", revision=None, device="cpu", dtype="auto", cache_dir=cache, family="ltx")


def test_tiny_still_is_i2vgenxl(tiny_model_dir: Path) -> None:
    gen = load_generator("tiny", revision=None, device="cpu", dtype="auto", cache_dir=tiny_model_dir.parent)
    assert gen.info.family.name == "i2vgenxl" and gen.info.model_id == "tiny"
    assert type(gen._pipe).__name__ == "DaemonI2VGenXLPipeline"  # the repaired prompt encoding
    assert gen.generate(_request(64, 64, 2)).frames.shape == (2, 64, 64, 3)


def test_build_is_reused(cache: Path, generators: dict[str, DiffusersGenerator]) -> None:
    dest = cache / folder_name("tiny-svd")
    before = (dest / MARKER).stat().st_mtime_ns
    assert build_into("tiny-svd", dest) == dest
    assert (dest / MARKER).stat().st_mtime_ns == before


def test_config_family_key() -> None:
    assert ModelConfig().family == "auto"
    assert ModelConfig(family="ltx").family == "ltx"


@pytest.mark.parametrize("model_id", ["tiny-ltx", "tiny-wan", "tiny-cogvideox"])
def test_wide_clips_fit_the_position_tables(generators: dict[str, DiffusersGenerator], model_id: str) -> None:
    # 1024 wide (a 1024p-class long side) but one row of patches high: cheap, and it catches a
    # transformer whose position tables only cover small clips.
    _, _, _, frames, multiple = CASES[model_id]
    req = _request(1024, multiple, frames, steps=1)
    assert generators[model_id].generate(req).frames.shape == (frames, multiple, 1024, 3)
