"""Reading an operator's ffmpeg filter text the way ffmpeg's own tokenizer does.

Quotes, escapes and ``[labels]`` are honoured, so a recipe's filters can be spliced into the
one-pass graph under their own label prefix, and their filter names checked.
"""

from __future__ import annotations

import re


class RecipeError(ValueError):
    """A recipe definition that cannot work; the message names the field and the fix."""


_LABEL_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def prefix_labels(text: str, prefix: str) -> str:
    """Rename every ``[label]`` outside quotes to ``[{prefix}label]``, following ffmpeg's own tokenizer.

    ffmpeg ends a filter's arguments at an unquoted ``[``, so every unquoted bracket pair is a
    link label; backslash escapes one character and single quotes protect everything up to the
    next quote.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    quoted = False
    first_label_at: int | None = None
    last_label_end = -1
    while i < n:
        ch = text[i]
        if quoted:
            out.append(ch)
            if ch == "'":
                quoted = False
            i += 1
        elif ch == "\\":
            out.append(text[i : i + 2])
            i += 2
        elif ch == "'":
            quoted = True
            out.append(ch)
            i += 1
        elif ch == "[":
            end = text.find("]", i + 1)
            label = text[i + 1 : end] if end != -1 else text[i + 1 :]
            if end == -1 or not _LABEL_RE.fullmatch(label):
                raise RecipeError(
                    f"filter link label [{label}] must be 1 to 32 letters, digits or underscores "
                    "(the clip comes into the first filter by itself: no [0:v] needed)"
                )
            if first_label_at is None:
                first_label_at = i
            last_label_end = end
            out.append(f"[{prefix}{label}]")
            i = end + 1
        else:
            out.append(ch)
            i += 1
    if quoted:
        raise RecipeError("filters have an unclosed ' quote")
    if first_label_at is not None and not text[:first_label_at].strip():
        raise RecipeError(
            "filters must not start with an input [label]: the clip goes into the first filter by itself"
        )
    if last_label_end != -1 and not text[last_label_end + 1 :].strip():
        raise RecipeError(
            "filters must not end with an output [label]: the last filter's output is the recipe's file"
        )
    return "".join(out)


def filter_names(text: str) -> list[str]:
    """The filter names in filtergraph ``text`` (``scale=1:2,fade=t=in`` -> scale, fade).

    Splits on unquoted, unescaped ``,`` and ``;`` and drops ``[labels]``, as ffmpeg reads it.
    """
    names: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0

    def close() -> None:
        spec = re.sub(r"^\s*(\[[^\]]*\]\s*)*", "", "".join(current))
        name = re.split(r"[=@\s\[]", spec, maxsplit=1)[0]
        if name:
            names.append(name)
        current.clear()

    while i < len(text):
        ch = text[i]
        if quoted:
            quoted = ch != "'"
        elif ch == "\\":
            current.append(text[i : i + 2])
            i += 2
            continue
        elif ch == "'":
            quoted = True
        elif ch in ",;":
            close()
            i += 1
            continue
        current.append(ch)
        i += 1
    close()
    return names
