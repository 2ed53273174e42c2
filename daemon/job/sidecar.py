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
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.encode.recipes import is_recipe_name
from daemon.errors import SidecarError
from daemon.folders.names import (
    SIDECAR_EXTS,  # defined with the other inbox names; also imported from here
    plain_image_name,
)
from daemon.job.printable import CONTROL_RE, control_name, printable
from daemon.job.sidecar_text import CONTROL_FIX, decode, kind, parse_json, parse_toml, read_capped, show

if TYPE_CHECKING:
    from daemon.config_sections import GenerationConfig, LimitsConfig

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
    "last_image",
)

_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
_WHOLE_RE = re.compile(r"[+-]?[0-9]{1,20}")

_QUOTED_EXAMPLE = '"a cat walks slowly"'

# An error.txt lists this many problems at most (a list of 10,000 wrong names is one mistake).
_MAX_PROBLEMS = 20

_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


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
    # Which of steps / guidance_scale / seed the prompt file set (the rest of their values are the
    # config's): ``job.prepare.effective`` tells where each value in force came from.
    from_sidecar: frozenset[str] = frozenset()
    # The image the clip ends on, a file of the prompt file's folder (instead of NAME.last.EXT).
    last_image: str | None = None


def read_sidecar(
    path: str | Path,
    gen: GenerationConfig,
    limits: LimitsConfig,
    known_recipes: Collection[str],
    known_loras: Collection[str] = (),
    *,
    allow_empty_txt: bool = False,
) -> JobParams:
    """Read, decode and check one sidecar; raise SidecarError naming every problem found.

    ``allow_empty_txt``: an empty ``.txt`` is a prompt of "" (one is then written from the image).
    """
    path = Path(path)
    name = printable(path.name)  # file names are the share user's too: quoted with controls escaped
    ext = path.suffix.lower()
    if ext not in SIDECAR_EXTS:
        raise SidecarError(
            f'The prompt file "{name}" has an unsupported type: use a .txt, .toml or .json file.'
        )
    text = decode(read_capped(path, limits.max_sidecar_bytes), name)

    if ext == ".txt":
        problems: list[str] = []
        prompt = _check_prompt(text, "prompt", limits, problems, allow_empty=allow_empty_txt, txt=True)
        _raise_if(problems, name)
        return defaults(gen, prompt=prompt)

    data = parse_toml(text, name) if ext == ".toml" else parse_json(text, name)
    return _from_table(data, name, ext, gen, limits, known_recipes, known_loras)


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
    last_image = None
    if "last_image" in data:
        last_image = plain_image_name(data["last_image"])
        if last_image is None:
            fix = example("last_image", '"end.png"')
            problems.append(
                f"last_image = {show(data['last_image'])} is not the name of an image file beside the"
                f" prompt file: write just its name, e.g. {fix} (no folders)."
            )

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
        from_sidecar=frozenset(k for k in ("steps", "guidance_scale", "seed") if k in data),
        last_image=last_image,
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
    lines = "\n".join(f"- {p}" for p in problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        lines += f"\n- and {len(problems) - _MAX_PROBLEMS:,} more like these."
    raise SidecarError(f'The prompt file "{name}" has {len(problems):,} problems:\n{lines}')


def _unknown_key(key: str, value: Any) -> str:
    shown = show(key)[1:-1]  # the key without JSON quotes, control characters escaped
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
        problems.append(f"{key} = {show(value)} is {kind(value)}; it must be text in double quotes.")
        return ""
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip()
    control = CONTROL_RE.search(text)
    if control:  # written as an escape in TOML or JSON (a raw one already failed the whole file)
        problems.append(
            f"{key} contains the control character {control_name(control.group())} "
            f"at character {control.start() + 1}. {CONTROL_FIX}"
        )
    surrogate = _SURROGATE_RE.search(text)
    if surrogate:  # JSON lets "\ud83d" stand alone; it is half of an emoji, no character at all
        problems.append(
            f"{key} contains {printable(surrogate.group())}, half of a character written as a JSON "
            "escape; write the character itself (the file is UTF-8)."
        )
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
    problems.append(f"resolution = {show(value)} is not allowed: use one of {allowed}{hint}.")
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
        # Tips only for numbers of a sensible length (never one of 300 digits).
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e20:
            tip = f" Write it without the decimal point: {example(key, str(int(value)))}."
        elif isinstance(value, str) and _WHOLE_RE.fullmatch(value.strip()):
            tip = f" Write it without quotes: {example(key, value.strip())}."
        what = f"{key} = {show(value)} is {kind(value)}"
        problems.append(f"{what}; it must be a whole number from {lo} to {hi}{hint}.{tip}")
        return 0
    if not lo <= value <= hi:
        problems.append(f"{key} = {show(value)} is out of range: it must be from {lo} to {hi}{hint}.")
    return value


def _check_float(
    value: Any, key: str, lo: float, hi: float, problems: list[str], example: Callable[[str, str], str]
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        tip = ""
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()) and len(value.strip()) <= 20:
            tip = f" Write it without quotes: {example(key, value.strip())}."
        problems.append(
            f"{key} = {show(value)} is {kind(value)}; it must be a number from {lo:g} to {hi:g}.{tip}"
        )
        return 0.0
    if not math.isfinite(value) or not lo <= value <= hi:
        problems.append(f"{key} = {show(value)} is out of range: it must be from {lo:g} to {hi:g}.")
    return float(value)


def _check_loras(
    value: Any, known: Collection[str], problems: list[str], example: Callable[[str, str], str]
) -> tuple[str, ...]:
    available = ", ".join(sorted(known)) or "(none are configured)"
    if not isinstance(value, list):
        fix = example("loras", f'["{value}"]') if isinstance(value, str) else example("loras", '["NAME"]')
        problems.append(f"loras = {show(value)} is {kind(value)}; it must be a list of names, e.g. {fix}.")
        return ()
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append(f"loras: {show(item)} is {kind(item)}; each adapter is a name in quotes.")
        elif item in known:
            if item not in names:
                names.append(item)
        elif "/" in item or "\\" in item or item.endswith(".safetensors"):
            problems.append(
                f"loras: {show(item)} looks like a path or a Hub id; a prompt file picks adapters by the"
                f" names the operator configured only. Available: {available}."
            )
        else:
            close = difflib.get_close_matches(item, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean '{close[0]}'?" if close else "."
            problems.append(f"loras: there is no adapter called {show(item)}{hint} Available: {available}.")
    return tuple(names)


def _check_recipes(
    value: Any, known: Collection[str], problems: list[str], example: Callable[[str, str], str]
) -> tuple[str, ...]:
    available = ", ".join(sorted(known)) or "(none are configured)"
    if not isinstance(value, list):
        fix = (
            example("recipes", f'["{value}"]') if isinstance(value, str) else example("recipes", '["poster"]')
        )
        problems.append(f"recipes = {show(value)} is {kind(value)}; it must be a list of names, e.g. {fix}.")
        return ()
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append(f"recipes: {show(item)} is {kind(item)}; each recipe is a name in double quotes.")
        elif not is_recipe_name(item) or item not in known:  # shape first: never trust a name
            close = difflib.get_close_matches(item, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean '{close[0]}'?" if close else "."
            problems.append(f"recipes: there is no recipe called {show(item)}{hint} Available: {available}.")
        elif item not in names:
            names.append(item)
    return tuple(names)
