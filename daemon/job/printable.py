"""Text that share users wrote (prompts, file names), made safe to show in messages and logs.

A name or a prompt can hold control characters: ``ESC [ 2 J`` clears the screen of whoever prints
an ``error.txt`` or a log line holding it, and others move the cursor or retitle the terminal.
Every message the job code writes quotes user text through ``printable``, which writes those
characters as visible ``\\u001b`` escapes; prompts holding them are refused (``CONTROL_RE``).
"""

from __future__ import annotations

import re

# C0 controls other than tab and line feed (CR is normalised away first), DEL and the C1 range:
# what a prompt must not hold. A text file never holds them; pasted terminal output does.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# In a name or a quoted value nothing of the kind is shown raw, not even tab or a line break,
# nor the lone surrogates a file name that is not valid UTF-8 decodes to.
_UNSHOWN_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "backspace", 0x0B: "vertical tab", 0x0C: "form feed", 0x1B: "ESC"}


def printable(text: str) -> str:
    """``text`` with every control character (and lone surrogate) written as a ``\\uXXXX`` escape."""
    return _UNSHOWN_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def control_name(char: str) -> str:
    """How a message names one control character: ``ESC (U+001B)``."""
    code = ord(char)
    name = _NAMES.get(code, "DEL" if code == 0x7F else "control character")
    return f"{name} (U+{code:04X})"
