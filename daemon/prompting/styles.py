"""What each video family wants to read, as instructions to the prompt model.

The families were trained on different captions: Wan on long, detailed English descriptions (its
authors extend every prompt with a VLM before generating), LTX-Video on one chronological
paragraph that starts with the action, I2VGen-XL and the older UNet models on short captions.
A prompt in the wrong style still works, only worse: these instructions are the cheap part.
"""

from __future__ import annotations

from dataclasses import dataclass

# What every style asks for: the source material's most common failure is a clip that does not
# move, so a verb of motion and a camera are never optional.
_COMMON = (
    "You write prompts for an image-to-video model. The image is the first frame of the clip. "
    "Describe the main subject and setting as they are in the image, then one plausible motion of "
    "the subject with an action verb, then the camera (static, slow pan, dolly in, ...). "
    "Answer with the prompt only: no preamble, no quotes, no lists, no line breaks."
)

_REWRITE = (
    " The user gave a short prompt; keep their intent exactly (the same subject, action and mood), "
    "and add what the image shows. The user's prompt: "
)


@dataclass(frozen=True)
class Style:
    name: str
    system: str
    words: int  # the length asked for; max_new_tokens bounds what is written


WAN = Style(
    "wan",
    _COMMON + " Write 60 to 100 words of fluent English with concrete detail of the subject, its"
    " movement, the light and the background.",
    100,
)
LTX = Style(
    "ltx",
    _COMMON + " Write one paragraph, in the order things happen, starting with the main action;"
    " then the appearance of the subject, the background, the camera angle and the light. At most"
    " 150 words.",
    150,
)
SHORT = Style(
    "short",
    _COMMON + " Write one short sentence of at most 25 words.",
    25,
)
GENERAL = Style("general", _COMMON + " Write 40 to 70 words.", 70)


def style_for(family: str) -> Style:
    """The style for a family name of ``daemon.engine.families`` (tiny builds share their family's)."""
    if family.startswith("wan"):
        return WAN
    if family.startswith("ltx"):
        return LTX
    if family in ("i2vgenxl", "svd"):
        return SHORT
    return GENERAL


def instructions(style: Style, user_prompt: str | None) -> tuple[str, str]:
    """(system, user) texts for one prompt: from the image alone, or rewriting the user's words."""
    if user_prompt:
        return style.system, "Rewrite the prompt for this image." + _REWRITE + user_prompt
    return style.system, "Write the prompt for this image."
