"""The six built-in recipes, and how an operator's ``[recipes.NAME]`` tables change them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon.encode.recipes import RecipeConfig, check_recipe_name

_H264 = {"crf": 23, "preset": "fast", "pix_fmt": "yuv420p", "movflags": "+faststart"}

BUILTIN_RECIPES: dict[str, RecipeConfig] = {
    "vertical": RecipeConfig(
        description="1080x1920 H.264 for phones: scaled to fit, padded centred",
        ext="mp4",
        codec="libx264",
        filters=[
            "scale=1080:1920:force_original_aspect_ratio=decrease:flags=lanczos",
            "pad=1080:1920:(ow-iw)/2:(oh-ih)/2",
            "setsar=1",
        ],
        options=dict(_H264),
    ),
    "h264": RecipeConfig(
        description="H.264 (CRF 23, preset fast) at the clip's size",
        ext="mp4",
        codec="libx264",
        options=dict(_H264),
    ),
    "fps30": RecipeConfig(
        description="30 frames per second (frames repeated), same duration as the clip",
        ext="mp4",
        codec="libx264",
        fps=30,
        options=dict(_H264),
    ),
    "poster": RecipeConfig(
        description="the first frame as PNG",
        ext="png",
        codec="png",
        frames=1,
    ),
    "fade": RecipeConfig(
        description="H.264 that fades in from black and out to black",
        ext="mp4",
        codec="libx264",
        filters=[
            "fade=t=in:st=0:d={fade_duration}",
            "fade=t=out:st={fade_out_start}:d={fade_duration}",
        ],
        options=dict(_H264),
    ),
    "gif": RecipeConfig(
        description="small looping GIF preview (at most 320 pixels a side)",
        ext="gif",
        codec="gif",
        filters=[
            "scale=w='min(320,iw)':h='min(320,ih)':force_original_aspect_ratio=decrease:flags=lanczos",
            # One palette for the whole clip looks far better than the fixed 256-colour default.
            "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=bayer:bayer_scale=5",
        ],
        options={"loop": 0},
    ),
}


def effective_recipes(
    builtin: Mapping[str, RecipeConfig],
    operator_overrides: Mapping[str, RecipeConfig | Mapping[str, Any]] | None,
) -> dict[str, RecipeConfig]:
    """The recipes in force: built-ins, then the operator's tables.

    An operator table replaces a built-in of the same name whole (no field-by-field merge, so
    what the config says is all there is); ``enabled = false`` removes it.
    """
    merged: dict[str, RecipeConfig] = {}
    for name, recipe in builtin.items():
        merged[check_recipe_name(name)] = recipe
    for name, recipe in (operator_overrides or {}).items():
        check_recipe_name(name)
        merged[name] = recipe if isinstance(recipe, RecipeConfig) else RecipeConfig.model_validate(recipe)
    return {name: recipe for name, recipe in merged.items() if recipe.enabled}
