"""Reading a prompt file's bytes: size-capped, decoded (UTF-8 or UTF-16 with BOM), parsed as TOML
or JSON, with every failure worded for the person who saved the file."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from daemon.errors import SidecarError
from daemon.folders.trust import NotRegular, read_regular

# C0 controls other than tab and line feed (CR is normalised away first), DEL and the C1 range:
# a text file never holds them, binary data nearly always does.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

_SAVE_AS = "Open it in a text editor and save it as UTF-8 text (in Notepad: Save as, Encoding: UTF-8)."


def read_capped(path: Path, cap: int) -> bytes:
    try:
        data = read_regular(path, cap)
    except NotRegular:
        raise SidecarError(
            f'"{path.name}" is a link or a special file, not a prompt file. '
            "Put the text file itself in the inbox."
        ) from None
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


def decode(data: bytes, name: str) -> str:
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
    if CONTROL_RE.search(text):
        raise SidecarError(f'The prompt file "{name}" contains binary data, not just text. {_SAVE_AS}')
    return text


def parse_toml(text: str, name: str) -> dict[str, Any]:
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
            raise _JsonProblem(f"the key {show(key)} appears twice; keep only one of them")
        out[key] = value
    return out


def _no_constants(word: str) -> Any:
    raise _JsonProblem(f"{word} is not a number; write a plain number such as 9.0")


def parse_json(text: str, name: str) -> dict[str, Any]:
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
            f'{{"prompt": "a cat walks slowly", "num_frames": 16}}; it holds {kind(data)} instead.'
        )
    return data


def show(value: Any, limit: int = 60) -> str:
    """A value the way it looks in the file (strings quoted, true/false), shortened, controls escaped."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # TOML dates and times
        text = str(value)
    text = CONTROL_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind(value: Any) -> str:
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
