"""The prompt file ("sidecar") beside each image: reading it and checking every value.

``NAME.txt`` is the whole prompt; ``NAME.toml`` and ``NAME.json`` are tables of generation
settings. Values are checked against ``[limits]`` and returned as plain data, never evaluated,
formatted into commands or used as paths; every problem of a file is reported at once, one line
each, naming the key, the value and what is allowed.

``loras`` names adapters the config defines (``[loras.NAME]``), added for this job only; names
only, so a prompt file can never make the daemon read a file of its choosing. ``steps`` and
``guidance_scale`` left out are decided in ``daemon.job.prepare`` (an adapter's, the config's or
the model's published value; JOB.json records which).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.encode.recipes import is_recipe_name
from daemon.errors import SidecarError

if TYPE_CHECKING:
    from daemon.config_sections import GenerationConfig, LimitsConfig

SIDECAR_EXTS = (".txt", ".toml", ".json")

KNOWN_KEYS = (
    "prompt",
    "negative_prompt",
    "resolution",
    "num_frames",
    "fps",
    "steps",
    "guidance_scale",
    "seed",
    "recipes",
    "loras",
)

# C0 controls other than tab and line feed (CR is normalised away first), DEL and the C1 range:
# a text file never holds them, binary data nearly always does.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")

_QUOTED_EXAMPLE = '"a cat walks slowly"'
_SAVE_AS = "Open it in a text editor and save it as UTF-8 text (in Notepad: Save as, Encoding: UTF-8)."


@dataclass(frozen=True)
class JobParams:
    """The effective generation settings of one job (sidecar values over config defaults)."""

    prompt: str
    negative_prompt: str
    resolution: str
    num_frames: int
    fps: int
    steps: int | None  # None: set neither in the prompt file nor in [generation]
    guidance_scale: float | None
    seed: int | None  # None: the daemon picks a random seed and records it
    recipes: tuple[str, ...] | None  # None: the configured default list
    loras: tuple[str, ...] = ()  # adapters added for this job (by name)
    # Which of steps / guidance_scale the prompt file set (those win over an adapter's own values).
    from_sidecar: frozenset[str] = frozenset()


def read_sidecar(
    path: str | Path,
    gen: GenerationConfig,
    limits: LimitsConfig,
    known_recipes: Collection[str],
    known_loras: Collection[str] = (),
) -> JobParams:
    """Read, decode and check one sidecar; raise SidecarError naming every problem found."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SIDECAR_EXTS:
        raise SidecarError(
            f'The prompt file "{path.name}" has an unsupported type: use a .txt, .toml or .json file.'
        )
    text = _decode(_read_capped(path, limits.max_sidecar_bytes), path.name)

    if ext == ".txt":
        problems: list[str] = []
        prompt = _check_prompt(text, "prompt", limits, problems, allow_empty=False, txt=True)
        _raise_if(problems, path.name)
        return defaults(gen, prompt=prompt)

    data = _parse_toml(text, path.name) if ext == ".toml" else _parse_json(text, path.name)
    return _from_table(data, path.name, ext, gen, limits, known_recipes, known_loras)


# --- reading and decoding ------------------------------------------------------------------------


def _read_capped(path: Path, cap: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise SidecarError(f'The prompt file "{path.name}" disappeared before it could be read.') from None
    except IsADirectoryError:
        raise SidecarError(f'"{path.name}" is a folder, not a prompt file.') from None
    except OSError as e:
        reason = e.strerror or "read error"
        raise SidecarError(f'The prompt file "{path.name}" could not be read ({reason}).') from None
    if len(data) > cap:
        raise SidecarError(
            f'The prompt file "{path.name}" is too large: it is over {cap:,} bytes '
            f"(the limit is limits.max_sidecar_bytes = {cap:,}). "
            "A prompt file holds only the prompt and a few settings; check that the right file was used."
        )
    return data


def _decode(data: bytes, name: str) -> str:
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], enc
            break
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise SidecarError(f'The prompt file "{name}" is not a UTF-8 text file. {_SAVE_AS}') from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.removeprefix("\ufeff")  # a second BOM, e.g. a UTF-8 BOM re-encoded as UTF-16
    if "\x00" in text:
        raise SidecarError(
            f'The prompt file "{name}" is not a text file, or is UTF-16 text without a byte-order mark. '
            + _SAVE_AS
        )
    if _CONTROL_RE.search(text):
        raise SidecarError(f'The prompt file "{name}" contains binary data, not just text. {_SAVE_AS}')
    return text


def _parse_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SidecarError(
            f'The prompt file "{name}" is not valid TOML: {e}. '
            "Check that line: each setting is written key = value, and text goes in double quotes, "
            'e.g. prompt = "a cat walks slowly".'
        ) from None
    except RecursionError:
        raise SidecarError(f'The prompt file "{name}" is not valid TOML: it is nested too deeply.') from None


class _JsonProblem(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonProblem(f"the key {_show(key)} appears twice; keep only one of them")
        out[key] = value
    return out


def _no_constants(word: str) -> Any:
    raise _JsonProblem(f"{word} is not a number; write a plain number such as 9.0")


def _parse_json(text: str, name: str) -> dict[str, Any]:
    where = f'The prompt file "{name}"'
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise SidecarError(
            f"{where} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}). "
            "Check that line: text goes in double quotes, items are separated by commas, "
            'and there is no comma after the last item, e.g. {"prompt": "a cat walks slowly"}.'
        ) from None
    except _JsonProblem as e:
        raise SidecarError(f"{where} is not valid: {e}.") from None
    except RecursionError:
        raise SidecarError(f"{where} is not valid JSON: it is nested too deeply.") from None
    except ValueError:  # e.g. an integer with thousands of digits
        raise SidecarError(f"{where} is not valid JSON: it holds a number that is far too long.") from None
    if not isinstance(data, dict):
        raise SidecarError(
            f"{where} must hold one JSON object in curly braces, e.g. "
            f'{{"prompt": "a cat walks slowly", "num_frames": 16}}; it holds {_kind(data)} instead.'
        )
    return data


# --- checking values -----------------------------------------------------------------------------


def _from_table(
    data: dict[str, Any],
    name: str,
    ext: str,
    gen: GenerationConfig,
    limits: LimitsConfig,
    known_recipes: Collection[str],
    known_loras: Collection[str],
) -> JobParams:
    problems: list[str] = []
    for key in data:
        if key not in KNOWN_KEYS:
            problems.append(_unknown_key(key, data[key]))

    def example(key: str, value: str) -> str:
        return f'"{key}": {value}' if ext == ".json" else f"{key} = {value}"

    prompt = ""
    if "prompt" not in data:
        problems.append(f"'prompt' is missing: add it, e.g. {example('prompt', _QUOTED_EXAMPLE)}.")
    else:
        prompt = _check_prompt(data["prompt"], "prompt", limits, problems, allow_empty=False)
    negative = gen.negative_prompt
    if "negative_prompt" in data:
        negative = _check_prompt(
            data["negative_prompt"], "negative_prompt", limits, problems, allow_empty=True
        )

    resolution = gen.resolution
    if "resolution" in data:
        resolution = _check_resolution(data["resolution"], limits, problems, example)

    ints: dict[str, int | None] = {}
    for key, lo, hi in (
        ("num_frames", limits.min_num_frames, limits.max_num_frames),
        ("fps", limits.min_fps, limits.max_fps),
        ("steps", limits.min_steps, limits.max_steps),
    ):
        ints[key] = getattr(gen, key)
        if key in data:
            ints[key] = _check_int(data[key], key, lo, hi, problems, example)

    guidance = gen.guidance_scale
    if "guidance_scale" in data:
        guidance = _check_float(
            data["guidance_scale"],
            "guidance_scale",
            limits.min_guidance_scale,
            limits.max_guidance_scale,
            problems,
            example,
        )

    seed = gen.seed
    if "seed" in data:
        seed = _check_int(
            data["seed"],
            "seed",
            0,
            limits.max_seed,
            problems,
            example,
            hint=" (leave seed out to get a random one)",
        )

    recipes = None
    if "recipes" in data:
        recipes = _check_recipes(data["recipes"], known_recipes, problems, example)
    loras: tuple[str, ...] = ()
    if "loras" in data:
        loras = _check_loras(data["loras"], known_loras, problems, example)

    _raise_if(problems, name)
    num_frames, fps = ints["num_frames"], ints["fps"]
    assert num_frames is not None and fps is not None  # always configured
    return JobParams(
        prompt=prompt,
        negative_prompt=negative,
        resolution=resolution,
        num_frames=num_frames,
        fps=fps,
        steps=ints["steps"],
        guidance_scale=guidance,
        seed=seed,
        recipes=recipes,
        loras=loras,
        from_sidecar=frozenset(k for k in ("steps", "guidance_scale") if k in data),
    )


def defaults(gen: GenerationConfig, *, prompt: str) -> JobParams:
    """The configured defaults for every key but the prompt (also used for default_prompt jobs)."""
    return JobParams(
        prompt=prompt,
        negative_prompt=gen.negative_prompt,
        resolution=gen.resolution,
        num_frames=gen.num_frames,
        fps=gen.fps,
        steps=gen.steps,
        guidance_scale=gen.guidance_scale,
        seed=gen.seed,
        recipes=None,
    )


def _raise_if(problems: list[str], name: str) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise SidecarError(f'The prompt file "{name}" has a problem: {problems[0]}')
    lines = "\n".join(f"- {p}" for p in problems)
    raise SidecarError(f'The prompt file "{name}" has {len(problems)} problems:\n{lines}')


def _unknown_key(key: str, value: Any) -> str:
    shown = _show(key)[1:-1]  # the key without JSON quotes, control characters escaped
    close = difflib.get_close_matches(
        key.lower().replace("-", "_").replace(" ", "_"), KNOWN_KEYS, n=1, cutoff=0.6
    )
    if close:
        return f"unknown key '{shown}' — did you mean '{close[0]}'?"
    hint = ""
    if isinstance(value, dict):
        hint = f" Write the settings at the top of the file, not under a [{shown}] heading."
    return f"unknown key '{shown}'.{hint} Allowed keys: {', '.join(KNOWN_KEYS)}."


def _check_prompt(
    value: Any, key: str, limits: LimitsConfig, problems: list[str], *, allow_empty: bool, txt: bool = False
) -> str:
    if not isinstance(value, str):
        problems.append(f"{key} = {_show(value)} is {_kind(value)}; it must be text in double quotes.")
        return ""
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip()
    if _CONTROL_RE.search(text):
        problems.append(f"{key} contains control characters; write plain text only.")
    if not text and not allow_empty:
        problems.append(
            "the prompt is empty: write what should move and how, e.g. a cat walks slowly."
            if txt
            else f"{key} is empty: write what should move and how."
        )
    if len(text) > limits.max_prompt_chars:
        problems.append(
            f"{key} is {len(text):,} characters long; at most {limits.max_prompt_chars:,} are allowed "
            "(limits.max_prompt_chars). Shorten it."
        )
    return text


def _check_resolution(
    value: Any, limits: LimitsConfig, problems: list[str], example: Callable[[str, str], str]
) -> str:
    allowed = ", ".join(f'"{r}"' for r in limits.resolutions)
    if isinstance(value, str) and value in limits.resolutions:
        return value
    hint = ""
    norm = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    for r in limits.resolutions:
        if norm in (r, r.removesuffix("p")):
            hint = "; write " + example("resolution", f'"{r}"')
            break
    problems.append(f"resolution = {_show(value)} is not allowed: use one of {allowed}{hint}.")
    return ""


def _check_int(
    value: Any,
    key: str,
    lo: int,
    hi: int,
    problems: list[str],
    example: Callable[[str, str], str],
    hint: str = "",
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        tip = ""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            tip = f" Write it without the decimal point: {example(key, str(int(value)))}."
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            tip = f" Write it without quotes: {example(key, value.strip())}."
        what = f"{key} = {_show(value)} is {_kind(value)}"
        problems.append(f"{what}; it must be a whole number from {lo} to {hi}{hint}.{tip}")
        return 0
    if not lo <= value <= hi:
        problems.append(f"{key} = {_show(value)} is out of range: it must be from {lo} to {hi}{hint}.")
    return value


def _check_float(
    value: Any, key: str, lo: float, hi: float, problems: list[str], example: Callable[[str, str], str]
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        tip = ""
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
            tip = f" Write it without quotes: {example(key, value.strip())}."
        problems.append(
            f"{key} = {_show(value)} is {_kind(value)}; it must be a number from {lo:g} to {hi:g}.{tip}"
        )
        return 0.0
    if not math.isfinite(value) or not lo <= value <= hi:
        problems.append(f"{key} = {_show(value)} is out of range: it must be from {lo:g} to {hi:g}.")
    return float(value)


def _check_loras(
    value: Any, known: Collection[str], problems: list[str], example: Callable[[str, str], str]
) -> tuple[str, ...]:
    available = ", ".join(sorted(known)) or "(none are configured)"
    if not isinstance(value, list):
        fix = example("loras", f'["{value}"]') if isinstance(value, str) else example("loras", '["NAME"]')
        problems.append(f"loras = {_show(value)} is {_kind(value)}; it must be a list of names, e.g. {fix}.")
        return ()
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append(f"loras: {_show(item)} is {_kind(item)}; each adapter is a name in quotes.")
        elif item in known:
            if item not in names:
                names.append(item)
        elif "/" in item or "\\" in item or item.endswith(".safetensors"):
            problems.append(
                f"loras: {_show(item)} looks like a path or a Hub id; a prompt file picks adapters by the"
                f" names the operator configured only. Available: {available}."
            )
        else:
            close = difflib.get_close_matches(item, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean '{close[0]}'?" if close else "."
            problems.append(f"loras: there is no adapter called {_show(item)}{hint} Available: {available}.")
    return tuple(names)


def _check_recipes(
    value: Any, known: Collection[str], problems: list[str], example: Callable[[str, str], str]
) -> tuple[str, ...]:
    available = ", ".join(sorted(known)) or "(none are configured)"
    if not isinstance(value, list):
        fix = (
            example("recipes", f'["{value}"]') if isinstance(value, str) else example("recipes", '["poster"]')
        )
        problems.append(
            f"recipes = {_show(value)} is {_kind(value)}; it must be a list of names, e.g. {fix}."
        )
        return ()
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append(
                f"recipes: {_show(item)} is {_kind(item)}; each recipe is a name in double quotes."
            )
        elif not is_recipe_name(item) or item not in known:  # shape first: never trust a name
            close = difflib.get_close_matches(item, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean '{close[0]}'?" if close else "."
            problems.append(f"recipes: there is no recipe called {_show(item)}{hint} Available: {available}.")
        elif item not in names:
            names.append(item)
    return tuple(names)


# --- showing values to people --------------------------------------------------------------------


def _show(value: Any, limit: int = 60) -> str:
    """A value the way it looks in the file (strings quoted, true/false), shortened, controls escaped."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # TOML dates and times
        text = str(value)
    text = _CONTROL_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return "a date or time"
