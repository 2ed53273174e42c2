"""Reading and checking prompt files (sidecars), written as real files in every encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config_sections import GenerationConfig, LimitsConfig
from daemon.errors import SidecarError
from daemon.job.sidecar import KNOWN_KEYS, JobParams, read_sidecar

GEN = GenerationConfig(
    negative_prompt="blurry",
    resolution="512p",
    num_frames=16,
    fps=8,
    steps=50,
    guidance_scale=9.0,
    seed=None,
    default_prompt=None,
)
LIMITS = LimitsConfig(
    max_image_pixels=40_000_000,
    max_image_bytes=100_000_000,
    max_sidecar_bytes=4096,
    max_prompt_chars=200,
    resolutions=["512p", "768p", "1024p"],
    min_num_frames=2,
    max_num_frames=64,
    min_fps=1,
    max_fps=60,
    min_steps=1,
    max_steps=150,
    min_guidance_scale=0.0,
    max_guidance_scale=30.0,
    max_seed=2**32 - 1,
)
RECIPES = {"poster", "h264", "vertical", "gif", "fade", "fps30"}
LORAS = {"lightning", "watercolour"}


def read(path: Path, limits: LimitsConfig = LIMITS) -> JobParams:
    return read_sidecar(path, GEN, limits, RECIPES, LORAS)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return p


def error_of(path: Path, limits: LimitsConfig = LIMITS) -> str:
    with pytest.raises(SidecarError) as e:
        read(path, limits)
    return str(e.value)


def toml_error(tmp_path: Path, body: str) -> str:
    return error_of(write(tmp_path, "job.toml", 'prompt = "a cat"\n' + body))


# --- .txt and encodings -------------------------------------------------------------------------


PROMPT = "Ein Kätzchen läuft langsam — 猫\nzweite Zeile"


@pytest.mark.parametrize(
    "raw",
    [
        PROMPT.encode("utf-8"),
        b"\xef\xbb\xbf" + PROMPT.encode("utf-8"),
        b"\xff\xfe" + PROMPT.encode("utf-16-le"),
        b"\xfe\xff" + PROMPT.encode("utf-16-be"),
        PROMPT.replace("\n", "\r\n").encode("utf-8"),
        b"\xff\xfe" + PROMPT.replace("\n", "\r\n").encode("utf-16-le"),
        PROMPT.replace("\n", "\r").encode("utf-8"),  # old Mac line ends
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "crlf", "utf16le-crlf", "cr"],
)
def test_txt_encodings(tmp_path: Path, raw: bytes) -> None:
    params = read(write(tmp_path, "cat.txt", raw))
    assert params.prompt == PROMPT


def test_txt_is_trimmed_and_gets_defaults(tmp_path: Path) -> None:
    params = read(write(tmp_path, "cat.txt", "\n\n  \t a cat walks slowly \r\n\r\n  "))
    assert params == JobParams(
        prompt="a cat walks slowly",
        negative_prompt="blurry",
        resolution="512p",
        num_frames=16,
        fps=8,
        steps=50,
        guidance_scale=9.0,
        seed=None,
        recipes=None,
    )


def test_utf8_bom_in_toml_and_json(tmp_path: Path) -> None:
    assert read(write(tmp_path, "a.toml", b'\xef\xbb\xbfprompt = "x"\r\nfps = 9\r\n')).fps == 9
    assert read(write(tmp_path, "a.json", b'\xef\xbb\xbf{"prompt": "x", "fps": 10}')).fps == 10
    utf16 = b"\xff\xfe" + '{"prompt": "\u00e9t\u00e9"}'.encode("utf-16-le")
    assert read(write(tmp_path, "b.json", utf16)).prompt == "\u00e9t\u00e9"


@pytest.mark.parametrize("body", ["", "   \r\n\t\n", "\xef\xbb\xbf"])
def test_empty_txt_prompt_fails(tmp_path: Path, body: str) -> None:
    raw = body.encode("latin-1") if body.startswith("\xef") else body.encode()
    msg = error_of(write(tmp_path, "cat.txt", raw))
    assert '"cat.txt"' in msg and "prompt is empty" in msg


def test_txt_prompt_too_long(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "long.txt", "x" * 201))
    assert "201 characters" in msg and "at most 200" in msg and "limits.max_prompt_chars" in msg
    assert read(write(tmp_path, "ok.txt", "x" * 200)).prompt == "x" * 200


def test_latin1_file_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "cat.txt", "caf\u00e9 au lait".encode("latin-1")))
    assert "not a UTF-8 text file" in msg and "save it as UTF-8" in msg


def test_utf16_without_bom_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "cat.txt", "a cat".encode("utf-16-le")))
    assert "without a byte-order mark" in msg and "UTF-8" in msg


def test_binary_garbage_refused(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 4
    msg = error_of(write(tmp_path, "cat.txt", garbage))
    assert '"cat.txt"' in msg and "UTF-8" in msg
    # Valid UTF-8 that is still not text (control bytes, like a binary header) is refused too.
    msg = error_of(write(tmp_path, "bin.toml", b"\x01\x02\x03PK\x03\x04 prompt"))
    assert "binary data" in msg and '"bin.toml"' in msg


def test_png_bytes_as_sidecar_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "oops.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"))
    assert '"oops.json"' in msg and "UTF-8" in msg


def test_too_large_file(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "big.txt", "a" * 4097))
    assert "too large" in msg and "4,096" in msg and "limits.max_sidecar_bytes" in msg
    small = LIMITS.model_copy(update={"max_prompt_chars": 5000})
    assert len(read(write(tmp_path, "edge.txt", "a" * 4096), small).prompt) == 4096


def test_wrong_extension(tmp_path: Path) -> None:
    assert ".txt, .toml or .json" in error_of(write(tmp_path, "cat.md", "a cat"))


def test_missing_file(tmp_path: Path) -> None:
    assert "disappeared" in error_of(tmp_path / "gone.txt")


# --- .toml and .json: happy paths -------------------------------------------------------------------


FULL = {
    "prompt": "  a cat walks slowly  ",
    "negative_prompt": "dogs",
    "resolution": "768p",
    "num_frames": 24,
    "fps": 12,
    "steps": 30,
    "guidance_scale": 7.5,
    "seed": 1234,
    "recipes": ["vertical", "gif", "vertical"],
    "loras": ["watercolour", "watercolour"],
}
EXPECTED = JobParams(
    prompt="a cat walks slowly",
    negative_prompt="dogs",
    resolution="768p",
    num_frames=24,
    fps=12,
    steps=30,
    guidance_scale=7.5,
    seed=1234,
    recipes=("vertical", "gif"),
    loras=("watercolour",),
    from_sidecar=frozenset({"steps", "guidance_scale", "seed"}),
)


def test_toml_every_key(tmp_path: Path) -> None:
    body = """
# a comment
prompt = "  a cat walks slowly  "
negative_prompt = "dogs"
resolution = "768p"
num_frames = 24
fps = 12
steps = 30
guidance_scale = 7.5
seed = 1234
recipes = ["vertical", "gif", "vertical"]
loras = ["watercolour", "watercolour"]
"""
    assert read(write(tmp_path, "job.toml", body)) == EXPECTED


def test_json_every_key(tmp_path: Path) -> None:
    assert read(write(tmp_path, "job.json", json.dumps(FULL, indent=2))) == EXPECTED


def test_known_keys_cover_job_params() -> None:
    assert set(KNOWN_KEYS) == set(JobParams.__dataclass_fields__) - {"from_sidecar"}


def test_steps_and_guidance_left_out_are_not_from_the_sidecar(tmp_path: Path) -> None:
    params = read(write(tmp_path, "a.toml", 'prompt = "x"\nsteps = 4\n'))
    assert params.from_sidecar == {"steps"}
    assert (params.steps, params.guidance_scale) == (4, GEN.guidance_scale)
    unset = GenerationConfig(**{**GEN.model_dump(), "steps": None, "guidance_scale": None})
    params = read_sidecar(write(tmp_path, "b.txt", "x"), unset, LIMITS, RECIPES, LORAS)
    assert (params.steps, params.guidance_scale, params.from_sidecar) == (None, None, frozenset())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["lightnin"]', "there is no adapter called \"lightnin\" — did you mean 'lightning'?"),
        ('["/etc/passwd"]', "looks like a path or a Hub id"),
        ('["lightx2v/Wan-LoRA"]', "picks adapters by the names the operator configured only"),
        ('["x.safetensors"]', "looks like a path"),
        ('"lightning"', 'it must be a list of names, e.g. loras = ["lightning"]'),
        ("[1]", "each adapter is a name in quotes"),
    ],
)
def test_loras_are_configured_names_only(tmp_path: Path, value: str, expected: str) -> None:
    message = toml_error(tmp_path, f"loras = {value}\n")
    assert expected in message
    if "adapter called" in message or "path" in message:
        assert "Available: lightning, watercolour." in message


def test_toml_minimal_gets_defaults(tmp_path: Path) -> None:
    params = read(write(tmp_path, "job.toml", 'prompt = """\nmulti\nline\n"""\n'))
    assert params.prompt == "multi\nline"
    assert (params.negative_prompt, params.resolution, params.num_frames, params.fps) == (
        "blurry",
        "512p",
        16,
        8,
    )
    assert (params.steps, params.guidance_scale, params.seed, params.recipes) == (50, 9.0, None, None)


def test_config_seed_is_the_default(tmp_path: Path) -> None:
    gen = GEN.model_copy(update={"seed": 77})
    assert read_sidecar(write(tmp_path, "a.txt", "x"), gen, LIMITS, RECIPES).seed == 77
    assert (
        read_sidecar(write(tmp_path, "a.json", '{"prompt": "x", "seed": 0}'), gen, LIMITS, RECIPES).seed == 0
    )


def test_guidance_scale_accepts_int(tmp_path: Path) -> None:
    params = read(write(tmp_path, "job.toml", 'prompt = "x"\nguidance_scale = 12\n'))
    assert params.guidance_scale == 12.0 and isinstance(params.guidance_scale, float)


def test_empty_negative_prompt_and_recipes(tmp_path: Path) -> None:
    params = read(write(tmp_path, "job.json", '{"prompt": "x", "negative_prompt": "", "recipes": []}'))
    assert params.negative_prompt == "" and params.recipes == ()


def test_limits_at_the_edges_are_allowed(tmp_path: Path) -> None:
    body = 'prompt = "x"\nnum_frames = 64\nfps = 1\nsteps = 150\nguidance_scale = 0\nseed = 4294967295\n'
    params = read(write(tmp_path, "job.toml", body))
    assert (params.num_frames, params.fps, params.steps, params.guidance_scale, params.seed) == (
        64,
        1,
        150,
        0.0,
        4294967295,
    )


# --- .toml and .json: problems ----------------------------------------------------------------------


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, "num_frame = 16\n")
    assert "unknown key 'num_frame' — did you mean 'num_frames'?" in msg
    assert '"job.toml"' in msg


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("Prompt", "prompt"),
        ("negative-prompt", "negative_prompt"),
        ("guidance", "guidance_scale"),
        ("recipe", "recipes"),
    ],
)
def test_unknown_key_suggestions(tmp_path: Path, key: str, suggestion: str) -> None:
    msg = error_of(write(tmp_path, "job.json", json.dumps({"prompt": "x", key: 1})))
    assert f"unknown key '{key}' — did you mean '{suggestion}'?" in msg


def test_unknown_key_without_suggestion_lists_allowed(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, "colour = 3\n")
    assert "unknown key 'colour'" in msg and "did you mean" not in msg
    assert "Allowed keys: prompt, negative_prompt, resolution" in msg


def test_section_heading_in_sidecar(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, "[generation]\nfps = 8\n")
    assert (
        "unknown key 'generation'. Write the settings at the top of the file, not under a [generation]" in msg
    )


def test_missing_prompt(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.toml", "fps = 8\n"))
    assert "'prompt' is missing" in msg and 'prompt = "a cat walks slowly"' in msg
    msg = error_of(write(tmp_path, "job.json", '{"fps": 8}'))
    assert '"prompt": "a cat walks slowly"' in msg


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            'num_frames = "16"',
            'num_frames = "16" is text; it must be a whole number from 2 to 64. Write it without quotes',
        ),
        (
            "num_frames = 16.5",
            "num_frames = 16.5 is a decimal number; it must be a whole number from 2 to 64",
        ),
        ("fps = [8]", "fps = [8] is a list; it must be a whole number from 1 to 60"),
        ("steps = {a = 1}", 'steps = {"a": 1} is a table; it must be a whole number from 1 to 150'),
        ('guidance_scale = "high"', 'guidance_scale = "high" is text; it must be a number from 0 to 30'),
        ('guidance_scale = "7.5"', "Write it without quotes: guidance_scale = 7.5"),
        ("seed = 1.5", "seed = 1.5 is a decimal number; it must be a whole number from 0 to 4294967295"),
        (
            "resolution = 512",
            'resolution = 512 is not allowed: use one of "512p", "768p", "1024p"; write resolution = "512p"',
        ),
        ('resolution = "512P"', 'write resolution = "512p"'),
        ('resolution = "720p"', 'resolution = "720p" is not allowed: use one of "512p", "768p", "1024p".'),
        ('recipes = "gif"', 'recipes = "gif" is text; it must be a list of names, e.g. recipes = ["gif"]'),
        ("recipes = [1]", "recipes: 1 is a whole number; each recipe is a name in double quotes"),
        ("negative_prompt = 3", "negative_prompt = 3 is a whole number; it must be text in double quotes"),
        ("date = 1979-05-27", "unknown key 'date'"),
    ],
)
def test_wrong_types(tmp_path: Path, body: str, expected: str) -> None:
    msg = toml_error(tmp_path, body + "\n")
    assert expected in msg


def test_prompt_wrong_type(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": ["a", "cat"]}'))
    assert 'prompt = ["a", "cat"] is a list; it must be text in double quotes' in msg


@pytest.mark.parametrize("key", ["num_frames", "fps", "steps", "seed"])
def test_bool_is_not_an_int(tmp_path: Path, key: str) -> None:
    msg = toml_error(tmp_path, f"{key} = true\n")
    assert f"{key} = true is true/false; it must be a whole number" in msg
    msg = error_of(write(tmp_path, "job.json", json.dumps({"prompt": "x", key: False})))
    assert f"{key} = false is true/false" in msg


def test_bool_is_not_a_guidance_scale(tmp_path: Path) -> None:
    assert "guidance_scale = true is true/false; it must be a number" in toml_error(
        tmp_path, "guidance_scale = true\n"
    )


@pytest.mark.parametrize("key", ["num_frames", "fps", "steps", "seed"])
def test_integral_float_refused_with_hint(tmp_path: Path, key: str) -> None:
    msg = toml_error(tmp_path, f"{key} = 16.0\n")
    assert f"{key} = 16.0 is a decimal number" in msg and f"without the decimal point: {key} = 16" in msg
    msg = error_of(write(tmp_path, "job.json", f'{{"prompt": "x", "{key}": 16.0}}'))
    assert f'without the decimal point: "{key}": 16' in msg


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("num_frames", 1, "from 2 to 64"),
        ("num_frames", 65, "from 2 to 64"),
        ("fps", 0, "from 1 to 60"),
        ("fps", 61, "from 1 to 60"),
        ("steps", 0, "from 1 to 150"),
        ("steps", 151, "from 1 to 150"),
        ("guidance_scale", -0.5, "from 0 to 30"),
        ("guidance_scale", 30.5, "from 0 to 30"),
        ("seed", -1, "from 0 to 4294967295 (leave seed out to get a random one)"),
        ("seed", 2**32, "from 0 to 4294967295"),
    ],
)
def test_out_of_range(tmp_path: Path, key: str, value: float, allowed: str) -> None:
    msg = toml_error(tmp_path, f"{key} = {value}\n")
    assert f"{key} = {value} is out of range: it must be {allowed}" in msg


def test_ranges_come_from_limits(tmp_path: Path) -> None:
    tight = LIMITS.model_copy(update={"max_num_frames": 8, "max_seed": 99})
    msg = error_of(write(tmp_path, "job.toml", 'prompt = "x"\nnum_frames = 9\nseed = 100\n'), tight)
    assert "num_frames = 9 is out of range: it must be from 2 to 8" in msg
    assert "seed = 100 is out of range: it must be from 0 to 99" in msg
    narrow = LIMITS.model_copy(update={"resolutions": ["512p"]})
    msg = error_of(write(tmp_path, "r.toml", 'prompt = "x"\nresolution = "1024p"\n'), narrow)
    assert 'use one of "512p".' in msg


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_toml_non_finite_guidance_scale(tmp_path: Path, value: str) -> None:
    assert "guidance_scale" in toml_error(tmp_path, f"guidance_scale = {value}\n")


def test_toml_prompt_too_long_and_empty(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.toml", f'prompt = "{"y" * 201}"\nnegative_prompt = "{"n" * 250}"\n'))
    assert "prompt is 201 characters long; at most 200" in msg
    assert "negative_prompt is 250 characters long" in msg
    assert "prompt is empty" in error_of(write(tmp_path, "e.toml", 'prompt = "   "\n'))


def test_control_characters_in_prompt_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": "a cat\\u0000\\u001b[31m"}'))
    assert "prompt contains the control character NUL (U+0000) at character 6" in msg


def test_unknown_recipe_lists_available(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, 'recipes = ["vertikal", "poster"]\n')
    assert "there is no recipe called \"vertikal\" — did you mean 'vertical'?" in msg
    assert "Available: fade, fps30, gif, h264, poster, vertical." in msg


@pytest.mark.parametrize("name", ["../etc/passwd", "-rf", "a b", "x" * 65, "", "$(reboot)"])
def test_odd_recipe_names_refused(tmp_path: Path, name: str) -> None:
    recipes = RECIPES | {name}  # even if a bogus name were "known", its shape is refused
    path = write(tmp_path, "job.json", json.dumps({"prompt": "x", "recipes": [name]}))
    with pytest.raises(SidecarError, match="there is no recipe called"):
        read_sidecar(path, GEN, LIMITS, recipes)


def test_bad_toml_syntax_mentions_the_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.toml", 'prompt = "a cat"\nfps = 8\nsteps = fifty\n'))
    assert "not valid TOML" in msg and "line 3" in msg and '"job.toml"' in msg
    assert "double quotes" in msg


def test_toml_duplicate_key(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.toml", 'prompt = "a"\nprompt = "b"\n'))
    assert "not valid TOML" in msg and "line 2" in msg


def test_bad_json_syntax_mentions_the_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{\n  "prompt": "a cat",\n  "fps": 8,\n}\n'))
    assert "not valid JSON" in msg and "line 4" in msg and '"job.json"' in msg


@pytest.mark.parametrize(
    "body, kind", [("[1, 2]", "a list"), ('"a cat"', "text"), ("42", "a whole number"), ("null", "null")]
)
def test_json_not_an_object(tmp_path: Path, body: str, kind: str) -> None:
    msg = error_of(write(tmp_path, "job.json", body))
    assert "must hold one JSON object in curly braces" in msg and f"it holds {kind} instead" in msg


def test_json_duplicate_keys_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": "a", "fps": 8, "fps": 12}'))
    assert 'the key "fps" appears twice' in msg


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_refused(tmp_path: Path, constant: str) -> None:
    msg = error_of(write(tmp_path, "job.json", f'{{"prompt": "a", "guidance_scale": {constant}}}'))
    assert f"{constant} is not a number" in msg


def test_json_overflowing_float_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": "a", "guidance_scale": 1e999}'))
    assert "guidance_scale = Infinity is out of range" in msg


def test_json_deep_nesting_refused(tmp_path: Path) -> None:
    deep = LIMITS.model_copy(update={"max_sidecar_bytes": 1_000_000})
    msg = error_of(write(tmp_path, "job.json", "[" * 200_000 + "]" * 200_000), deep)
    assert "not valid JSON: it is nested too deeply" in msg


def test_several_errors_reported_together(tmp_path: Path) -> None:
    body = 'num_frame = 16\nfps = 0\nsteps = true\nguidance_scale = "x"\nseed = -5\nrecipes = ["nope"]\n'
    msg = error_of(write(tmp_path, "job.toml", body))
    lines = msg.splitlines()
    assert lines[0] == 'The prompt file "job.toml" has 7 problems:'
    assert len(lines) == 8 and all(line.startswith("- ") for line in lines[1:])
    for part in (
        "'num_frame'",
        "'prompt' is missing",
        "fps = 0",
        "steps = true",
        'guidance_scale = "x"',
        "seed = -5",
        '"nope"',
    ):
        assert sum(part in line for line in lines[1:]) == 1, part


def test_single_error_is_one_line(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, "fps = 0\n")
    assert (
        msg == 'The prompt file "job.toml" has a problem: fps = 0 is out of range: it must be from 1 to 60.'
    )


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    msg = toml_error(tmp_path, f'resolution = "{"z" * 500}"\n')
    assert "…" in msg and len(msg) < 300


def test_messages_have_no_python_jargon(tmp_path: Path) -> None:
    bodies = ['num_frames = "16"\nfps = 1.0\nseed = true\nrecipes = "x"\nfoo = 1\n', "prompt = [\n"]
    for i, body in enumerate(bodies):
        msg = error_of(write(tmp_path, f"j{i}.toml", body))
        for word in ("Traceback", "ValidationError", "TOMLDecodeError", "<class", "str'", "int'", "None"):
            assert word not in msg


# --- absurd numbers and strings: every one named with its key, never an internal error -------------

BIG = "9" * 5000  # past Python's 4,300-digit limit on converting numbers from and to text


@pytest.mark.parametrize(
    "name, body, key, allowed",
    [
        ("job.toml", f'prompt = "x"\nnum_frames = {BIG}', "num_frames", "from 2 to 64"),
        ("job.toml", f'prompt = "x"\nnum_frames = -{BIG}', "num_frames", "from 2 to 64"),
        ("job.toml", f'prompt = "x"\nfps = 1_{BIG}', "fps", "from 1 to 60"),
        ("job.toml", f'prompt = "x"\nseed = 0x{"f" * 4000}', "seed", "from 0 to 4294967295"),
        ("job.toml", f'prompt = "x"\nsteps = 0o{"7" * 5000}', "steps", "from 1 to 150"),
        ("job.toml", f'prompt = "x"\nguidance_scale = {BIG}', "guidance_scale", "from 0 to 30"),
        ("job.toml", f'prompt = "x"\nresolution = {BIG}', "resolution", '"512p", "768p", "1024p"'),
        ("job.toml", f'prompt = "x"\nseed = 1{"0" * 200}', "seed", "from 0 to 4294967295"),
        ("job.toml", f'prompt = "x"\nseed = {"9" * 4300}', "seed", "(4,300 digits) is a number far too long"),
        ("job.json", f'{{"prompt": "x", "seed": {BIG}}}', "seed", "from 0 to 4294967295"),
        ("job.json", f'{{"prompt": "x", "num_frames": -{BIG}}}', "num_frames", "from 2 to 64"),
        ("job.json", f'{{"prompt": "x", "guidance_scale": {BIG}}}', "guidance_scale", "from 0 to 30"),
    ],
)
def test_numbers_thousands_of_digits_long_name_the_key(
    tmp_path: Path, name: str, body: str, key: str, allowed: str
) -> None:
    limits = LIMITS.model_copy(update={"max_sidecar_bytes": 64 * 1024})
    msg = error_of(write(tmp_path, name, body), limits)
    assert f"{key} = " in msg and allowed in msg, msg
    assert "digits)" in msg and "…" in msg  # the value, shortened, with its length
    assert len(msg) < 400, msg


def test_a_long_number_among_other_problems_is_reported_with_them(tmp_path: Path) -> None:
    body = f'prompt = "x"\nseed = {BIG}\nrecipes = [{BIG}, "poster"]\nfps = 0\n'
    msg = error_of(
        write(tmp_path, "job.toml", body), LIMITS.model_copy(update={"max_sidecar_bytes": 64 * 1024})
    )
    assert "3 problems" in msg
    assert "seed = 99999999999999999999… (5,000 digits) is a number far too long" in msg
    assert "recipes: 99999999999999999999… (5,000 digits) is a number far too long" in msg
    assert "fps = 0 is out of range" in msg


@pytest.mark.parametrize(
    "body, key, allowed",
    [
        ("guidance_scale = nan", "guidance_scale = NaN", "from 0 to 30"),
        ("guidance_scale = -inf", "guidance_scale = -Infinity", "from 0 to 30"),
        ("guidance_scale = 1e999", "guidance_scale = Infinity", "from 0 to 30"),
        ("num_frames = inf", "num_frames = Infinity", "whole number from 2 to 64"),
        ("num_frames = -5", "num_frames = -5", "from 2 to 64"),
        ("seed = -1", "seed = -1", "from 0 to 4294967295"),
        ("num_frames = 1e300", "num_frames = 1e+300", "whole number from 2 to 64"),
    ],
)
def test_non_finite_and_negative_numbers_name_the_key(
    tmp_path: Path, body: str, key: str, allowed: str
) -> None:
    msg = toml_error(tmp_path, body + "\n")
    assert key in msg and allowed in msg, msg
    assert len(msg) < 300, msg  # no 300-digit "write it without the decimal point" tip


def test_a_huge_string_is_shortened_everywhere(tmp_path: Path) -> None:
    limits = LIMITS.model_copy(update={"max_sidecar_bytes": 64 * 1024})
    long = "x" * 20_000
    body = json.dumps({"prompt": "x", "resolution": long, "recipes": [long], long: 1})
    msg = error_of(write(tmp_path, "job.json", body), limits)
    assert "3 problems" in msg and len(msg) < 1000


def test_thousands_of_problems_are_cut_to_a_readable_list(tmp_path: Path) -> None:
    limits = LIMITS.model_copy(update={"max_sidecar_bytes": 64 * 1024})
    body = json.dumps({"prompt": "x", "recipes": list(range(5000))})
    msg = error_of(write(tmp_path, "job.json", body), limits)
    assert msg.startswith('The prompt file "job.json" has 5,000 problems:')
    assert len(msg.splitlines()) == 22 and msg.endswith("- and 4,980 more like these.")


# --- control characters ------------------------------------------------------------------------------


def test_terminal_colour_codes_in_a_txt_prompt_are_named(tmp_path: Path) -> None:
    # Pasted out of a terminal: the prompt holds ESC [ 31 m ... ESC [ 0 m.
    msg = error_of(write(tmp_path, "cat.txt", "a cat\n\x1b[31mwalks\x1b[0m slowly\n"))
    assert "contains the control character ESC (U+001B) on line 2, column 1" in msg
    assert "line breaks and tabs are fine" in msg and "binary" not in msg


def test_tabs_and_line_breaks_stay_in_the_prompt(tmp_path: Path) -> None:
    assert read(write(tmp_path, "cat.txt", "a cat\twalks\r\nslowly\n")).prompt == "a cat\twalks\nslowly"


@pytest.mark.parametrize("escape", ["\\u001b", "\\u0007", "\\u009b", "\\u007f"])
def test_escaped_control_characters_in_a_json_prompt_are_refused(tmp_path: Path, escape: str) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": "red' + escape + '[2J"}'))
    assert "prompt contains the control character" in msg and "at character 4" in msg
    assert not any(c in msg for c in "\x1b\x07\x9b\x7f")


def test_a_lone_surrogate_in_a_json_prompt_is_refused(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "job.json", '{"prompt": "a cat \\ud83d"}'))
    assert "half of a character" in msg and "\\ud83d" in msg
    msg.encode("utf-8")  # the message itself can be written to error.txt


def test_a_file_name_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "evil\x1b[2J\x07.txt", ""))
    assert '"evil\\u001b[2J\\u0007.txt"' in msg and "\x1b" not in msg and "\x07" not in msg
