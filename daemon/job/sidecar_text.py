"""Reading a prompt file's bytes: size-capped, decoded (UTF-8 or UTF-16 with BOM), parsed as TOML
or JSON, with every failure worded for the person who saved the file.

Numbers too long to be any setting (a whole number of thousands of digits, which Python refuses
to convert to or from text beyond 4,300 digits) come back as ``HugeNumber``, so the checks name
the key, a shortened value and what is allowed, like any other wrong value.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import SidecarError
from daemon.folders.trust import NotRegular, read_regular
from daemon.job.printable import CONTROL_RE, control_name, printable

# Longer than this (in decimal digits) and a whole number is a HugeNumber: no setting needs more.
MAX_DIGITS = 100
# TOML: a decimal number of more digits than Python converts (4,300 by default) stands in as this
# hexadecimal number (plus its index) while the file is parsed again; hexadecimal has no limit.
_STAND_IN = 1 << 400
_LONG_DECIMAL_RE = re.compile(r"(?<![\w.+-])[+-]?[0-9](?:_?[0-9])*(?![\w.])")

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

# What coloured or formatted terminal output holds (ESC sequences, the bell ending a title, backspace).
_TERMINAL_CONTROLS = frozenset("\x1b\x07\x08")

_SAVE_AS = "Open it in a text editor and save it as UTF-8 text (in Notepad: Save as, Encoding: UTF-8)."


@dataclass(frozen=True)
class HugeNumber:
    """A whole number with more than ``MAX_DIGITS`` digits, as the file wrote it (shortened)."""

    shown: str  # its first digits, e.g. "99999999999999999999… (5,000 digits)"

    @classmethod
    def from_text(cls, text: str) -> HugeNumber:
        sign = "-" if text.startswith("-") else ""
        digits = text.lstrip("+-").replace("_", "")
        return cls(f"{sign}{digits[:20]}… ({len(digits):,} digits)")

    @classmethod
    def from_int(cls, value: int) -> HugeNumber | None:
        """A HugeNumber for ``value`` if it has more than MAX_DIGITS digits, else None."""
        if value.bit_length() <= 330:  # below 2**330 a number has at most 100 digits
            return None
        try:
            text = str(value)
        except ValueError:  # past Python's limit (a TOML hex, octal or binary number): shown in hex
            digits = math.floor(abs(value).bit_length() * math.log10(2)) + 1
            sign = "-" if value < 0 else ""
            return cls(f"{sign}{hex(abs(value))[:20]}… (about {digits:,} digits)")
        return cls.from_text(text) if len(text.lstrip("-")) > MAX_DIGITS else None


def read_capped(path: Path, cap: int) -> bytes:
    name = printable(path.name)
    try:
        data = read_regular(path, cap)
    except NotRegular:
        raise SidecarError(
            f'"{name}" is a link or a special file, not a prompt file. Put the text file itself in the inbox.'
        ) from None
    except FileNotFoundError:
        raise SidecarError(f'The prompt file "{name}" disappeared before it could be read.') from None
    except IsADirectoryError:
        raise SidecarError(f'"{name}" is a folder, not a prompt file.') from None
    except OSError as e:
        reason = e.strerror or "read error"
        raise SidecarError(f'The prompt file "{name}" could not be read ({reason}).') from None
    if len(data) > cap:
        raise SidecarError(
            f'The prompt file "{name}" is too large: it is over {cap:,} bytes '
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
    first = CONTROL_RE.search(text)
    if first is None:
        return text
    line = text.count("\n", 0, first.start()) + 1
    column = first.start() - (text.rfind("\n", 0, first.start()) + 1) + 1
    where = f"{control_name(first.group())} on line {line}, column {column}"
    if set(CONTROL_RE.findall(text)) <= _TERMINAL_CONTROLS:  # text copied out of a terminal
        raise SidecarError(f'The prompt file "{name}" contains the control character {where}. {CONTROL_FIX}')
    raise SidecarError(
        f'The prompt file "{name}" contains binary data, not just text (the first control character '
        f"is {where}). {_SAVE_AS}"
    )


# Why a control character is refused and what to do: text copied out of a terminal carries them.
CONTROL_FIX = (
    "Prompts are plain text: line breaks and tabs are fine, other control characters (such as the "
    "escape codes that colour text in a terminal) are not. Delete them, or type the prompt again."
)


def parse_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return _tame(*_loads_toml(text))
    except tomllib.TOMLDecodeError as e:
        raise SidecarError(
            f'The prompt file "{name}" is not valid TOML: {e}. '
            "Check that line: each setting is written key = value, and text goes in double quotes, "
            'e.g. prompt = "a cat walks slowly".'
        ) from None
    except RecursionError:
        raise SidecarError(f'The prompt file "{name}" is not valid TOML: it is nested too deeply.') from None
    except ValueError:  # what _loads_toml could not parse even with stand-ins
        raise SidecarError(
            f'The prompt file "{name}" holds a number thousands of digits long; no setting takes more '
            "than a few digits (e.g. num_frames = 16)."
        ) from None


def _loads_toml(text: str) -> tuple[dict[str, Any], list[str]]:
    """The parsed table, and the decimal numbers too long to convert that stand in it (see _STAND_IN)."""
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:  # Python's limit on converting long decimal numbers (4,300 digits)
        pass
    longs: list[str] = []

    def stand_in(match: re.Match[str]) -> str:
        if sum(c.isdigit() for c in match.group()) <= sys.get_int_max_str_digits():
            return match.group()
        longs.append(match.group())
        return hex(_STAND_IN + len(longs) - 1)

    return tomllib.loads(_LONG_DECIMAL_RE.sub(stand_in, text)), longs


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


def _json_int(text: str) -> int | HugeNumber:
    digits = len(text.lstrip("-"))
    return HugeNumber.from_text(text) if digits > MAX_DIGITS else int(text)


def _tame(data: dict[str, Any], longs: list[str]) -> dict[str, Any]:
    """``data`` with every whole number of more than MAX_DIGITS digits made a HugeNumber (in place).

    ``longs``: the numbers TOML parsing stood in for, by index (see ``parse_toml``).
    """

    def tame(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, dict):
                for key in value:
                    value[key] = tame(value[key])
            elif isinstance(value, list):
                value[:] = [tame(v) for v in value]
            return value
        if 0 <= value - _STAND_IN < len(longs):
            return HugeNumber.from_text(longs[value - _STAND_IN])
        return HugeNumber.from_int(value) or value

    tame(data)
    return data


def parse_json(text: str, name: str) -> dict[str, Any]:
    where = f'The prompt file "{name}"'
    try:
        data = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_int=_json_int
        )
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
    if isinstance(value, HugeNumber):
        return value.shown
    try:
        text = json.dumps(value, ensure_ascii=False, default=_shown_other)
    except (TypeError, ValueError, RecursionError):
        text = f"({kind(value)})"
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown_other(value: Any) -> str:
    # TOML dates and times; a HugeNumber inside a list or table
    return value.shown if isinstance(value, HugeNumber) else str(value)


def kind(value: Any) -> str:
    if isinstance(value, HugeNumber):
        return "a number far too long"
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
