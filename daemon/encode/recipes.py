"""Recipes: the extra files an operator wants made from each job's frames.

An operator writes recipes in the TOML config under ``[recipes.NAME]`` with no Python::

    [recipes.square]
    description = "1080x1080 for feeds"
    ext = "mp4"
    codec = "libx264"
    filters = ["scale=1080:1080:force_original_aspect_ratio=decrease", "pad=1080:1080:(ow-iw)/2:(oh-ih)/2"]
    options = { crf = 20, preset = "fast", pix_fmt = "yuv420p", movflags = "+faststart" }

``filters`` are ffmpeg filtergraph text, joined with ``,`` into one chain whose input is the clip
and whose output is the recipe's file. One entry may hold a whole sub-graph with ``;`` and
``[labels]`` (the GIF palette trick); labels are private to the recipe. Placeholders
``{duration}`` ``{frames}`` ``{fps}`` ``{width}`` ``{height}`` ``{fade_duration}``
``{fade_out_start}`` are filled with numbers of the clip; nothing else is substituted
(``%{...}`` drawtext expansions pass through untouched).

This module only describes and renders recipes; ``daemon.encode`` runs them.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from daemon.encode.clip import ClipInfo, FrameCount
from daemon.encode.filter_text import RecipeError, filter_names, prefix_labels

RECIPE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_RECIPE_NAME_RE = re.compile(RECIPE_NAME_PATTERN)

#: Use as the key type of the config's ``recipes`` table so a bad name fails at load time.
RecipeName = Annotated[str, StringConstraints(pattern=RECIPE_NAME_PATTERN)]

OptionValue = bool | int | float | str

PLACEHOLDERS: tuple[str, ...] = (
    "duration",
    "frames",
    "fps",
    "width",
    "height",
    "fade_duration",
    "fade_out_start",
)

# ``%{...}`` is drawtext's own expansion syntax, so a brace right after ``%`` is never ours; any
# other ``{...}`` must be a known placeholder, so a typo fails at load time instead of reaching ffmpeg.
_PLACEHOLDER_RE = re.compile(r"(?<!%)\{([^{}]*)\}")
_EXT_RE = re.compile(r"^[A-Za-z0-9]{1,10}$")
# Encoder names are short identifiers (libx264, h264_nvenc, libvpx-vp9); never an option.
_CODEC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
# ffmpeg option names as written without the dash: crf, b:v, x264-params, profile:v.
_OPTION_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*(?:[:-][a-z0-9_]+)*$")

# Options that would rewire the command (extra inputs, other graphs, other outputs) or that
# i2vd sets itself; each has a proper field or is not something a recipe may change.
_RESERVED_OPTIONS: dict[str, str] = {
    **dict.fromkeys(("i", "map", "y", "n", "stdin", "nostdin", "attach", "dump_attachment"), "not allowed"),
    **dict.fromkeys(
        (
            "filter_complex",
            "lavfi",
            "filter_complex_script",
            "filter",
            "filter:v",
            "vf",
            "af",
            "filter_script",
        ),
        "use the `filters` list",
    ),
    **dict.fromkeys(("c", "c:v", "codec", "codec:v", "vcodec"), "use the `codec` field"),
    **dict.fromkeys(("frames", "frames:v", "vframes"), "use the `frames` field"),
    **dict.fromkeys(
        ("loglevel", "v", "report", "progress", "stats", "nostats", "hide_banner"), "not allowed"
    ),
}

# Muxers that read ``%d`` in the file name as a frame-number pattern; ``update=1`` turns that off
# so a job name with ``%`` in it is written verbatim, and makes one file per recipe.
IMAGE2_EXTS: frozenset[str] = frozenset(
    {
        "png",
        "jpg",
        "jpeg",
        "bmp",
        "tif",
        "tiff",
        "ppm",
        "pgm",
        "pbm",
        "pam",
        "tga",
        "qoi",
        "jxl",
        "dpx",
        "exr",
    }
)

# Encoders that pick a non-4:2:0 format for RGB input when left alone, which most players refuse.
_DEFAULT_YUV420_CODECS = frozenset({"libx264", "libx265"})
# Chroma-subsampled formats need even width and height.
_SUBSAMPLED_PREFIXES = ("yuv420", "yuvj420", "yuv422", "yuvj422", "yuva420", "nv12", "nv21", "nv16", "p010")
_EVEN_CROP = "crop=trunc(iw/2)*2:trunc(ih/2)*2"

# Filters that give exactly one frame out for each frame in, with its timestamp: a recipe made
# only of these (and of our own fps/crop) has a frame count known in advance, so a short output
# is caught, not only an empty one. Anything else (select, trim, setpts, loop, palettegen's
# sub-graph, ...) may legitimately change the count, and then at least one frame is asked for.
FRAME_PRESERVING_FILTERS: frozenset[str] = frozenset(
    {
        "boxblur",
        "colorbalance",
        "colorchannelmixer",
        "colorspace",
        "copy",
        "crop",
        "curves",
        "deband",
        "drawbox",
        "drawgrid",
        "drawtext",
        "eq",
        "fade",
        "format",
        "gblur",
        "hflip",
        "hqdn3d",
        "hue",
        "lut",
        "lutrgb",
        "lutyuv",
        "negate",
        "null",
        "pad",
        "rotate",
        "scale",
        "setdar",
        "setparams",
        "setrange",
        "setsar",
        "smartblur",
        "transpose",
        "unsharp",
        "vflip",
        "vignette",
        "zscale",
    }
)
# Output options that change which frames are written (rate, start, length): with any of them
# the count is not known in advance.
_TIMING_OPTIONS = frozenset({"r", "t", "to", "ss", "sseof", "fpsmax", "vsync", "fps_mode", "shortest"})
# Names i2vd gives its own files in the job folder; a recipe's short name must not take them.
_RESERVED_SHORT_NAMES = frozenset({"mp4", "json", "log"})


# A stand-in clip to check placeholders and labels at config-load time, before any job exists.
_SAMPLE_CLIP = ClipInfo(frames=16, fps=8, width=512, height=512)


class RecipeConfig(BaseModel):
    """One ``[recipes.NAME]`` table of the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    enabled: bool = Field(True, description="false removes a built-in recipe of the same name")
    ext: str = Field("mp4", description="file extension; also picks the container (mp4, webm, gif, png, ...)")
    codec: str | None = Field(
        None, description="ffmpeg encoder, e.g. libx264, png, gif; none: the container's default"
    )
    filters: list[str] = Field(default_factory=list, description="ffmpeg filters, applied in order")
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description="extra ffmpeg output options without the dash: crf, preset, pix_fmt, ...",
    )
    fps: int | None = Field(None, ge=1, le=240, description="output frame rate; keeps the clip's duration")
    frames: int | None = Field(None, ge=1, description="stop after this many frames (1 for a still image)")

    @field_validator("ext")
    @classmethod
    def _check_ext(cls, value: str) -> str:
        if not _EXT_RE.fullmatch(value):
            raise ValueError(f'ext {value!r} must be 1 to 10 letters or digits, without the dot (e.g. "mp4")')
        return value.lower()

    @field_validator("codec")
    @classmethod
    def _check_codec(cls, value: str | None) -> str | None:
        if value is not None and not _CODEC_RE.fullmatch(value):
            raise ValueError(f'codec {value!r} is not an ffmpeg encoder name (e.g. "libx264", "png")')
        return value

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, value: list[str]) -> list[str]:
        for text in value:
            if not text.strip():
                raise ValueError("filters must not contain empty strings")
            if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text) or "\x7f" in text:
                raise ValueError(f"filter {text!r} contains control characters")
        return value

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, OptionValue]) -> dict[str, OptionValue]:
        for key, item in value.items():
            if not _OPTION_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"option name {key!r} is not an ffmpeg option name; write it without the dash (e.g. crf)"
                )
            if key in _RESERVED_OPTIONS:
                raise ValueError(f"option {key!r} cannot be set in a recipe: {_RESERVED_OPTIONS[key]}")
            if isinstance(item, str) and any(ord(ch) < 32 or ch == "\x7f" for ch in item):
                raise ValueError(f"option {key!r} has control characters in its value")
        return value

    @model_validator(mode="after")
    def _check_whole(self) -> RecipeConfig:
        if self.fps is not None and "r" in self.options:
            raise ValueError("set either fps or options.r, not both (fps also keeps the duration exact)")
        try:
            self.render_filters(_SAMPLE_CLIP, "chk_")
        except RecipeError as exc:
            raise ValueError(str(exc)) from None
        return self

    # --- rendering -------------------------------------------------------------------------

    def render_filters(self, clip: ClipInfo, label_prefix: str) -> str | None:
        """The operator's filters as one chain for ``clip``: placeholders filled, labels made private.

        ``label_prefix`` keeps internal ``[labels]`` of several recipes apart when they share one
        ffmpeg graph. Returns None when the recipe has no filters of its own.
        """
        if not self.filters:
            return None
        values = clip.placeholders()

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                known = ", ".join("{" + key + "}" for key in PLACEHOLDERS)
                raise RecipeError(f"unknown placeholder {{{name}}} in filters; known: {known}")
            return values[name]

        text = ",".join(_PLACEHOLDER_RE.sub(fill, item.strip()) for item in self.filters)
        return prefix_labels(text, label_prefix)

    def pix_fmt(self) -> str | None:
        """The pixel format the output will be encoded in, when it is fixed by the recipe."""
        value = self.options.get("pix_fmt")
        if value is not None:
            return str(value)
        if self.codec in _DEFAULT_YUV420_CODECS:
            return "yuv420p"
        return None

    def render_chain(self, clip: ClipInfo, label_prefix: str) -> str | None:
        """The full filter chain for this recipe, including what ``fps`` and the pixel format need."""
        parts = []
        own = self.render_filters(clip, label_prefix)
        if own is not None:
            parts.append(own)
        # After the operator's filters, so frame-based filters and placeholders see the clip as made.
        if self.fps is not None:
            parts.append(f"fps={self.fps}")
        pix_fmt = self.pix_fmt()
        if own is not None and pix_fmt is not None and pix_fmt.startswith(_SUBSAMPLED_PREFIXES):
            # The clip itself is always even-sized, but the operator's filters may make it odd
            # (scale=720:-1), which x264 refuses in 4:2:0; dropping one edge row beats failing.
            parts.append(_EVEN_CROP)
        return ",".join(parts) if parts else None

    def file_name(self, stem: str, name: str) -> str:
        """``stem.NAME.EXT``, or ``stem.EXT`` when the name is the extension (``gif`` -> ``JOB.gif``).

        ``JOB.gif.gif`` says nothing the shorter name does not. The short form is never used where
        it would be one of the daemon's own files (``JOB.mp4``, ``JOB.json``, ``JOB.log``).
        """
        if name == self.ext and name not in _RESERVED_SHORT_NAMES:
            return f"{stem}.{self.ext}"
        return f"{stem}.{name}.{self.ext}"

    def expected_frames(self, clip: ClipInfo) -> FrameCount:
        """The frames this recipe's file must hold when made from ``clip``.

        A still image (png, jpg, ...: written with ``update=1``) holds exactly one. Without
        filters of unknown effect the count is known: the clip's, converted by ``fps`` (within
        one frame, as ffmpeg's fps filter rounds), capped by ``frames``. Otherwise any count from
        one up to ``frames`` is accepted: operator filters may trim or repeat frames on purpose.
        """
        if self.ext in IMAGE2_EXTS:
            return FrameCount(1, 1)
        cap = self.frames
        known = not _TIMING_OPTIONS.intersection(self.options) and all(
            name in FRAME_PRESERVING_FILTERS for name in filter_names(",".join(self.filters))
        )
        if not known:
            return FrameCount(1, cap)
        if self.fps is None:
            low = high = clip.frames
        else:
            exact = Fraction(clip.frames * self.fps, clip.fps)
            low, high = max(1, math.ceil(exact) - 1), math.floor(exact) + 1
        if cap is not None:
            low, high = min(low, cap), min(high, cap)
        return FrameCount(low, high)

    def output_options(self) -> dict[str, str]:
        """ffmpeg output options (name without the dash -> value) for this recipe's file."""
        out: dict[str, str] = {}
        if self.codec is not None:
            out["c:v"] = self.codec
        for key, value in self.options.items():
            out[key] = _option_text(value)
        pix_fmt = self.pix_fmt()
        if pix_fmt is not None:
            out["pix_fmt"] = pix_fmt
        if self.fps is not None:
            out["r"] = str(self.fps)
        if self.frames is not None:
            out["frames:v"] = str(self.frames)
        if self.ext in IMAGE2_EXTS and "update" not in out:
            out["update"] = "1"
        return out


def _option_text(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def is_recipe_name(name: str) -> bool:
    """Whether ``name`` has the shape of a recipe name (the one rule; config and sidecars use it)."""
    return isinstance(name, str) and _RECIPE_NAME_RE.fullmatch(name) is not None


def check_recipe_name(name: str) -> str:
    """Return ``name`` if it is a valid recipe name, else raise RecipeError naming the rule."""
    if not is_recipe_name(name):
        raise RecipeError(
            f"recipe name {name!r} must be 1 to 32 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name
