"""The one-pass ffmpeg graph: the raw frames in, split once, the master and every recipe out.

``job_targets`` says what each output is (its final and temporary names, its filter chain, its
encoder options, the frames it must hold) and ``build_command`` wires them into one ffmpeg
command reading raw RGB from a pipe. Running that command and checking what it wrote is
``daemon.encode.ffmpeg_run``'s; a job's encode (``daemon.encode.onepass``) and a recipe's
validation (``daemon.encode.validate``) both build their graphs here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
from ffmpeg.nodes import FilterNode

from daemon.encode.clip import ClipInfo, FrameCount
from daemon.encode.recipes import RecipeConfig, check_recipe_name
from daemon.folders.names import job_files

MASTER_KEY = "master"
#: The master is the clip users keep; it gets more bits than the CRF-23 delivery recipes.
MASTER_OPTIONS: dict[str, str] = {
    "c:v": "libx264",
    "crf": "18",
    "preset": "medium",
    "pix_fmt": "yuv420p",
    "movflags": "+faststart",
}

# Quiet enough that the last lines of stderr are the error itself, not progress or banners.
# empty_output turns "encoded nothing" (a recipe whose filters drop every frame) into a failure
# instead of a valid-looking file with no frames. Not every build honours it for one output of
# several (Debian's 5.1 exits 0 with a 262-byte mp4), hence the read-back check as well.
GLOBAL_ARGS = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-abort_on", "empty_output")


class _RawChain(FilterNode):
    """A filter chain passed to ffmpeg as written.

    ffmpeg-python escapes ``:``, ``=``, ``[`` and ``;`` in filter arguments, which would turn an
    operator's ``scale=1080:1920`` or palette sub-graph into one literal argument. The recipe text
    is already valid filtergraph syntax (validated by the schema, labels made private), so it is
    emitted between ffmpeg-python's own link labels untouched.
    """

    def __init__(self, stream: Any, chain: str) -> None:
        super().__init__(stream, "i2vd_chain", args=[chain])

    def _get_filter(self, outgoing_edges: Any) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Target:
    """One output of the graph: the master or a recipe's file."""

    key: str  # MASTER_KEY or a recipe name
    final: Path
    tmp: Path
    chain: str | None
    options: dict[str, str]
    #: Frames the finished file must hold; checked by decoding it before it is published.
    expect: FrameCount


def master_target(out_dir: Path, stem: str, token: str, clip: ClipInfo, extra: Mapping[str, str]) -> Target:
    options = {**MASTER_OPTIONS, **{k: str(v) for k, v in extra.items()}}
    # Stated outright so the master has exactly the generated frames at the job's rate.
    options["r"] = str(clip.fps)
    options["frames:v"] = str(clip.frames)
    return Target(
        key=MASTER_KEY,
        final=out_dir / job_files(stem).master,
        tmp=out_dir / f".i2vd-{token}.{MASTER_KEY}.mp4",
        chain=None,
        options=options,
        expect=FrameCount(clip.frames, clip.frames),
    )


def recipe_target(
    out_dir: Path, stem: str, token: str, index: int, name: str, recipe: RecipeConfig, clip: ClipInfo
) -> Target:
    # Temp names hold only our token, the validated name and extension: short, no '%' or '-'
    # prefix from the job name, and the real extension so ffmpeg picks the right muxer.
    return Target(
        key=name,
        final=out_dir / recipe.file_name(stem, name),
        tmp=out_dir / f".i2vd-{token}.{name}.{recipe.ext}",
        chain=recipe.render_chain(clip, f"r{index}_"),
        options=recipe.output_options(),
        expect=recipe.expected_frames(clip),
    )


def build_command(width: int, height: int, fps: int, targets: list[Target]) -> Any:
    """One ffmpeg command (ffmpeg-python's) reading raw RGB frames on stdin and writing every target."""
    source = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
    if len(targets) == 1:
        branches = [source]
    else:
        splitter = source.filter_multi_output("split")
        branches = [splitter.stream(i) for i in range(len(targets))]
    outputs = []
    for branch, target in zip(branches, targets, strict=True):
        stream = branch if target.chain is None else _RawChain(branch, target.chain).stream()
        # Absolute paths: a file name can never be read as an option or a protocol.
        outputs.append(ffmpeg.output(stream, str(target.tmp), **target.options))
    # -y only ever meets our own fresh temp names, never a user's file.
    return ffmpeg.merge_outputs(*outputs).global_args(*GLOBAL_ARGS).overwrite_output()


def job_targets(
    out_dir: Path,
    stem: str,
    token: str,
    clip: ClipInfo,
    recipes: Mapping[str, RecipeConfig],
    master_options: Mapping[str, str],
) -> list[Target]:
    """The master first, then one target per recipe, in the recipes' order."""
    targets = [master_target(out_dir, stem, token, clip, master_options)]
    for index, (name, recipe) in enumerate(recipes.items()):
        check_recipe_name(name)
        targets.append(recipe_target(out_dir, stem, token, index, name, recipe, clip))
    return targets
