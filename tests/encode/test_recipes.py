"""Recipe schema: what an operator may write under [recipes.NAME], and how it is rendered."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import TypeAdapter, ValidationError

from daemon.encode.builtin_recipes import BUILTIN_RECIPES, effective_recipes
from daemon.encode.clip import ClipInfo, FrameCount
from daemon.encode.filter_text import RecipeError, filter_names
from daemon.encode.recipes import RecipeConfig, RecipeName, check_recipe_name

CLIP = ClipInfo(frames=16, fps=8, width=512, height=704)
RECIPES_TABLE = TypeAdapter(dict[RecipeName, RecipeConfig])


def test_builtins_are_the_six_of_the_spec() -> None:
    assert set(BUILTIN_RECIPES) == {"vertical", "h264", "fps30", "poster", "fade", "gif"}
    assert all(recipe.enabled and recipe.description for recipe in BUILTIN_RECIPES.values())


def test_builtin_settings_match_the_spec() -> None:
    for name in ("vertical", "h264", "fps30", "fade"):
        recipe = BUILTIN_RECIPES[name]
        assert (recipe.ext, recipe.codec) == ("mp4", "libx264")
        assert recipe.options["pix_fmt"] == "yuv420p"
    for name in ("vertical", "h264"):
        assert BUILTIN_RECIPES[name].options["crf"] == 23
        assert BUILTIN_RECIPES[name].options["preset"] == "fast"
    assert BUILTIN_RECIPES["fps30"].fps == 30
    assert (BUILTIN_RECIPES["poster"].ext, BUILTIN_RECIPES["poster"].frames) == ("png", 1)
    assert BUILTIN_RECIPES["gif"].ext == "gif"
    assert BUILTIN_RECIPES["gif"].options["loop"] == 0


def test_operator_toml_parses_into_recipes() -> None:
    text = """
    [recipes.square]
    description = "1080x1080 for feeds"
    ext = "mp4"
    codec = "libx264"
    filters = ["scale=1080:1080:force_original_aspect_ratio=decrease", "pad=1080:1080:(ow-iw)/2:(oh-ih)/2"]
    options = { crf = 20, preset = "fast", pix_fmt = "yuv420p", movflags = "+faststart" }

    [recipes.webm]
    ext = "webm"
    codec = "libvpx-vp9"
    options = { "b:v" = 0, crf = 33, "row-mt" = true }

    [recipes.gif]
    enabled = false
    """
    table = RECIPES_TABLE.validate_python(tomllib.loads(text)["recipes"])
    assert table["square"].options["crf"] == 20
    assert table["webm"].output_options()["row-mt"] == "1"
    assert table["webm"].output_options()["b:v"] == "0"
    assert table["gif"].enabled is False


@pytest.mark.parametrize(
    "name",
    ["", "A", "Vertical", "-rf", "_x", "a b", "a/b", "../x", "x.y", "é", "x" * 33, "x\n", "x;y", "$(id)"],
)
def test_hostile_recipe_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        RECIPES_TABLE.validate_python({name: {}})
    with pytest.raises(RecipeError):
        check_recipe_name(name)


@pytest.mark.parametrize("name", ["a", "9", "vertical", "my-recipe_2", "x" * 32])
def test_good_recipe_names_are_accepted(name: str) -> None:
    assert check_recipe_name(name) == name
    assert list(RECIPES_TABLE.validate_python({name: {}})) == [name]


@pytest.mark.parametrize("ext", ["", ".mp4", "mp4;rm", "../mp4", "m p4", "mp4/", "-mp4", "x" * 11, "mp4\n"])
def test_hostile_extensions_are_refused(ext: str) -> None:
    with pytest.raises(ValidationError):
        RecipeConfig(ext=ext)


def test_extension_is_lowercased() -> None:
    assert RecipeConfig(ext="MP4").ext == "mp4"


@pytest.mark.parametrize("codec", ["-y", "lib x264", "x;y", "../x", ""])
def test_hostile_codecs_are_refused(codec: str) -> None:
    with pytest.raises(ValidationError):
        RecipeConfig(codec=codec)


@pytest.mark.parametrize(
    "key",
    ["-y", "i", "map", "filter_complex", "vf", "c:v", "codec", "frames:v", "y", "CRF", "a b", "x=y", ""],
)
def test_options_that_rewire_the_command_are_refused(key: str) -> None:
    with pytest.raises(ValidationError):
        RecipeConfig(options={key: "1"})


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="filter"):
        RecipeConfig.model_validate({"filter": ["hflip"]})


def test_fps_and_option_r_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="fps"):
        RecipeConfig(fps=30, options={"r": 30})


@pytest.mark.parametrize("bad", ["fade=d={durration}", "fade=d={__class__}", "x={fps.real}", "x={0}"])
def test_unknown_placeholders_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        RecipeConfig(filters=[bad])


def test_placeholders_are_filled_from_the_clip() -> None:
    recipe = RecipeConfig(
        filters=["fade=t=in:st=0:d={fade_duration}", "fade=t=out:st={fade_out_start}:d={fade_duration}"]
    )
    chain = recipe.render_filters(CLIP, "r0_")
    # 16 frames at 8 fps: fade 4 frames (0.5 s) ending on the last frame at 15/8 s.
    assert chain == "fade=t=in:st=0:d=0.5,fade=t=out:st=1.375:d=0.5"
    other = RecipeConfig(filters=["trim=duration={duration}", "scale={width}:{height}", "setpts=N/{fps}/TB"])
    assert other.render_filters(ClipInfo(frames=10, fps=3, width=64, height=48), "r0_") == (
        "trim=duration=3.333333,scale=64:48,setpts=N/3/TB"
    )


def test_fade_of_a_tiny_clip_stays_inside_it() -> None:
    values = ClipInfo(frames=2, fps=8, width=8, height=8).placeholders()
    assert float(values["fade_out_start"]) >= 0
    assert float(values["fade_out_start"]) + float(values["fade_duration"]) <= 1 / 8 + 1e-9
    assert ClipInfo(frames=1, fps=8, width=8, height=8).placeholders()["fade_out_start"] == "0"


def test_drawtext_expansions_pass_through() -> None:
    recipe = RecipeConfig(filters=["drawtext=text='%{pts}'"])
    assert recipe.render_filters(CLIP, "r0_") == "drawtext=text='%{pts}'"


def test_internal_labels_are_made_private() -> None:
    chain = BUILTIN_RECIPES["gif"].render_filters(CLIP, "r7_")
    assert chain is not None
    assert "split[r7_a][r7_b];[r7_a]palettegen" in chain
    assert "[r7_b][r7_p]paletteuse" in chain
    assert "[a]" not in chain


def test_brackets_inside_quotes_are_not_labels() -> None:
    recipe = RecipeConfig(filters=["drawtext=text='[x]'"])
    assert recipe.render_filters(CLIP, "r0_") == "drawtext=text='[x]'"


@pytest.mark.parametrize(
    "filters",
    [["[0:v]scale=10:10"], ["[in]scale=10:10"], ["scale=10:10[out]"], ["split[a b]"], ["drawtext=text='x"]],
)
def test_labels_at_the_ends_or_malformed_are_refused(filters: list[str]) -> None:
    with pytest.raises(ValidationError):
        RecipeConfig(filters=filters)


def test_render_chain_adds_fps_and_even_crop() -> None:
    fps30 = BUILTIN_RECIPES["fps30"]
    assert fps30.render_chain(CLIP, "r0_") == "fps=30"
    assert fps30.output_options()["r"] == "30"
    # The clip is even already; only the operator's own filters can make it odd.
    assert BUILTIN_RECIPES["h264"].render_chain(CLIP, "r0_") is None
    scaled = RecipeConfig(codec="libx264", filters=["scale=333:-1"])
    assert scaled.render_chain(CLIP, "r0_") == "scale=333:-1,crop=trunc(iw/2)*2:trunc(ih/2)*2"
    assert scaled.output_options()["pix_fmt"] == "yuv420p"
    assert RecipeConfig(codec="png", filters=["scale=333:-1"]).render_chain(CLIP, "r0_") == "scale=333:-1"


def test_output_options() -> None:
    poster = BUILTIN_RECIPES["poster"].output_options()
    assert poster == {"c:v": "png", "frames:v": "1", "update": "1"}
    h264 = BUILTIN_RECIPES["h264"].output_options()
    assert h264["c:v"] == "libx264"
    assert h264["crf"] == "23"
    assert "update" not in h264
    assert all(
        not key.startswith("-") for recipe in BUILTIN_RECIPES.values() for key in recipe.output_options()
    )


def test_effective_recipes_override_remove_add() -> None:
    custom_h264 = {"codec": "libx264", "options": {"crf": 30}}
    result = effective_recipes(
        BUILTIN_RECIPES,
        {"h264": custom_h264, "gif": RecipeConfig(enabled=False), "square": {"filters": ["crop=ih:ih"]}},
    )
    assert "gif" not in result
    assert result["h264"].options == {"crf": 30}  # Replaced whole, not merged with the built-in.
    assert result["h264"].description == ""
    assert result["square"].filters == ["crop=ih:ih"]
    assert result["vertical"] is BUILTIN_RECIPES["vertical"]
    assert list(result)[:5] == ["vertical", "h264", "fps30", "poster", "fade"]
    assert set(BUILTIN_RECIPES) == {"vertical", "h264", "fps30", "poster", "fade", "gif"}  # Not mutated.


def test_effective_recipes_refuses_bad_names_and_fields() -> None:
    with pytest.raises(RecipeError):
        effective_recipes(BUILTIN_RECIPES, {"Bad Name": RecipeConfig()})
    with pytest.raises(ValidationError):
        effective_recipes(BUILTIN_RECIPES, {"x": {"ext": "mp4", "colour": "red"}})


def test_effective_recipes_without_overrides() -> None:
    assert effective_recipes(BUILTIN_RECIPES, None) == BUILTIN_RECIPES


def test_file_names_drop_a_suffix_that_says_nothing() -> None:
    assert BUILTIN_RECIPES["gif"].file_name("job", "gif") == "job.gif"
    assert BUILTIN_RECIPES["poster"].file_name("job", "poster") == "job.poster.png"
    assert RecipeConfig(ext="webm").file_name("job", "webm") == "job.webm"
    assert RecipeConfig(ext="webm").file_name("job", "small") == "job.small.webm"
    # The short form would be the master clip, or the metadata: keep the long one.
    assert RecipeConfig(ext="mp4").file_name("job", "mp4") == "job.mp4.mp4"
    assert RecipeConfig(ext="json").file_name("job", "json") == "job.json.json"


def test_filter_names_follow_ffmpegs_syntax() -> None:
    assert filter_names("") == []
    assert filter_names("scale=1:2,pad=3:4") == ["scale", "pad"]
    assert filter_names("select=gte(n\\,6), fade=t=in") == ["select", "fade"]
    assert filter_names("drawtext=text='a,b;c':x=1,drawtext@two=text=x") == ["drawtext", "drawtext"]
    assert filter_names("split[a][b];[a]palettegen[p];[b] [p]paletteuse") == [
        "split",
        "palettegen",
        "paletteuse",
    ]


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (RecipeConfig(), FrameCount(16, 16)),
        (BUILTIN_RECIPES["h264"], FrameCount(16, 16)),
        (BUILTIN_RECIPES["vertical"], FrameCount(16, 16)),  # scale, pad, setsar: one frame per frame
        (BUILTIN_RECIPES["fade"], FrameCount(16, 16)),
        (BUILTIN_RECIPES["fps30"], FrameCount(59, 61)),  # 16 frames at 8 fps are 60 at 30, +-1 rounding
        (BUILTIN_RECIPES["poster"], FrameCount(1, 1)),
        (RecipeConfig(ext="jpg"), FrameCount(1, 1)),  # a still, however many frames went in
        (BUILTIN_RECIPES["gif"], FrameCount(1, None)),  # palettegen's sub-graph: not a simple chain
        (RecipeConfig(filters=["select=gte(n\\,8)"]), FrameCount(1, None)),  # may drop frames on purpose
        (RecipeConfig(filters=["select=1"], frames=5), FrameCount(1, 5)),
        (RecipeConfig(frames=5), FrameCount(5, 5)),
        (RecipeConfig(frames=50), FrameCount(16, 16)),
        (RecipeConfig(options={"t": 1}), FrameCount(1, None)),  # timing options change the count
    ],
)
def test_expected_frames(recipe: RecipeConfig, expected: FrameCount) -> None:
    assert recipe.expected_frames(CLIP) == expected


def test_frame_count_words() -> None:
    assert FrameCount(16, 16).describe() == "exactly 16"
    assert FrameCount(59, 61).describe() == "59 to 61"
    assert FrameCount(1).describe() == "at least 1"
    assert FrameCount(1).admits(1) and not FrameCount(1).admits(0)
    assert FrameCount(59, 61).admits(60) and not FrameCount(59, 61).admits(62)
