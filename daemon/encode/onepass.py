"""Turn generated frames into the master clip and the recipe outputs with ffmpeg.

The raw RGB frames are piped once into one ffmpeg process whose filter graph splits them into
the master and every recipe; nothing is re-encoded from the master and no frame files touch the
disk. Every file is written under a temporary dot-name in the job's folder, read back (it must
decode, with the frames it should have) and renamed into place only then, so nothing ever appears
half-written or empty. When the combined run fails, the master and then each failed recipe are
retried alone, so one broken recipe costs only its own file.

Which ffmpeg runs, and the read-back check, are in ``daemon.encode.ffmpeg``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ffmpeg
import numpy as np
from ffmpeg.nodes import FilterNode

from daemon.encode.ffmpeg import ADDRESS_RE, NOISE_RE, FFmpeg, count_frames, select_ffmpeg
from daemon.encode.recipes import ClipInfo, FrameCount, RecipeConfig, check_recipe_name
from daemon.errors import EncodeError
from daemon.folders.fsops import fsync_dir

MASTER_KEY = "master"
#: The master is the clip users keep; it gets more bits than the CRF-23 delivery recipes.
MASTER_OPTIONS: dict[str, str] = {
    "c:v": "libx264",
    "crf": "18",
    "preset": "medium",
    "pix_fmt": "yuv420p",
    "movflags": "+faststart",
}
#: Per ffmpeg run; generous because a 1024p clip with many recipes on a busy CPU is slow.
DEFAULT_TIMEOUT_S = 600.0
_ERROR_LINES = 4

# Quiet enough that the last lines of stderr are the error itself, not progress or banners.
# empty_output turns "encoded nothing" (a recipe whose filters drop every frame) into a failure
# instead of a valid-looking file with no frames. Not every build honours it for one output of
# several (Debian's 5.1 exits 0 with a 262-byte mp4), hence the read-back check as well.
_GLOBAL_ARGS = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-abort_on", "empty_output")


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeOutcome:
    """What became of one recipe: its file, or ffmpeg's reason why not."""

    name: str
    ok: bool
    path: Path | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": str(self.path) if self.path else None, "error": self.error}


@dataclass(frozen=True)
class EncodeResult:
    master: Path
    recipes: dict[str, RecipeOutcome]
    seconds: float
    #: False when the combined run failed and outputs were made one by one.
    single_pass: bool
    #: argv of the combined run, for the job's log.
    command: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [name for name, outcome in self.recipes.items() if not outcome.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "master": str(self.master),
            "recipes": {name: outcome.to_dict() for name, outcome in self.recipes.items()},
            "seconds": round(self.seconds, 3),
            "single_pass": self.single_pass,
        }


# --- the ffmpeg graph -----------------------------------------------------------------------


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
class _Target:
    key: str  # MASTER_KEY or a recipe name
    final: Path
    tmp: Path
    chain: str | None
    options: dict[str, str]
    #: Frames the finished file must hold; checked by decoding it before it is published.
    expect: FrameCount


@dataclass(frozen=True)
class _RunOutcome:
    returncode: int | None
    stderr: list[str]
    argv: list[str]
    timed_out: bool


def _master_target(out_dir: Path, stem: str, token: str, clip: ClipInfo, extra: Mapping[str, str]) -> _Target:
    options = {**MASTER_OPTIONS, **{k: str(v) for k, v in extra.items()}}
    # Stated outright so the master has exactly the generated frames at the job's rate.
    options["r"] = str(clip.fps)
    options["frames:v"] = str(clip.frames)
    return _Target(
        key=MASTER_KEY,
        final=out_dir / f"{stem}.mp4",
        tmp=out_dir / f".i2vd-{token}.{MASTER_KEY}.mp4",
        chain=None,
        options=options,
        expect=FrameCount(clip.frames, clip.frames),
    )


def _recipe_target(
    out_dir: Path, stem: str, token: str, index: int, name: str, recipe: RecipeConfig, clip: ClipInfo
) -> _Target:
    # Temp names hold only our token, the validated name and extension: short, no '%' or '-'
    # prefix from the job name, and the real extension so ffmpeg picks the right muxer.
    return _Target(
        key=name,
        final=out_dir / recipe.file_name(stem, name),
        tmp=out_dir / f".i2vd-{token}.{name}.{recipe.ext}",
        chain=recipe.render_chain(clip, f"r{index}_"),
        options=recipe.output_options(),
        expect=recipe.expected_frames(clip),
    )


def _build_command(width: int, height: int, fps: int, targets: list[_Target]) -> Any:
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
    return ffmpeg.merge_outputs(*outputs).global_args(*_GLOBAL_ARGS).overwrite_output()


def _targets(
    out_dir: Path,
    stem: str,
    token: str,
    clip: ClipInfo,
    recipes: Mapping[str, RecipeConfig],
    master_options: Mapping[str, str],
) -> list[_Target]:
    targets = [_master_target(out_dir, stem, token, clip, master_options)]
    for index, (name, recipe) in enumerate(recipes.items()):
        check_recipe_name(name)
        targets.append(_recipe_target(out_dir, stem, token, index, name, recipe, clip))
    return targets


def _drain(stream: IO[bytes], sink: deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            sink.append(line)
    stream.close()


def _run(frames: np.ndarray, fps: int, targets: list[_Target], exe: str, timeout: float) -> _RunOutcome:
    _, height, width, _ = frames.shape
    command = _build_command(width, height, fps, targets)
    argv = list(command.compile(cmd=exe))
    stderr: deque[str] = deque(maxlen=200)
    try:
        proc = command.run_async(cmd=exe, pipe_stdin=True, pipe_stderr=True)
    except OSError as exc:
        return _RunOutcome(None, [f"could not start ffmpeg: {exc}"], argv, False)
    # stderr is drained on its own thread: if ffmpeg filled that pipe while we block writing
    # frames into stdin, both sides would wait forever.
    reader = threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdin is not None
        try:
            for frame in frames:
                # One frame at a time: no second copy of the whole clip in memory.
                proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, ConnectionResetError, ValueError):
            pass  # ffmpeg quit early; its stderr says why.
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        reader.join(timeout=10)
    return _RunOutcome(returncode, list(stderr), argv, timed_out.is_set())


_EMPTY_RE = re.compile(r"Empty output|Output file is empty|received no packets", re.IGNORECASE)


def _error_text(run: _RunOutcome, targets: list[_Target], timeout: float) -> str:
    if run.timed_out:
        return f"ffmpeg did not finish within {timeout:.0f} seconds and was stopped"
    lines: list[str] = []
    for line in run.stderr:
        line = ADDRESS_RE.sub("", line)
        for target in targets:
            # Users and operators know the final names, not our temp names.
            line = line.replace(str(target.tmp), target.final.name)
        if line not in lines:
            lines.append(line)
    meaningful = [line for line in lines if not NOISE_RE.search(line)] or lines
    if not meaningful:
        return f"ffmpeg failed (exit status {run.returncode}) without saying why"
    said = "\n".join(meaningful[-_ERROR_LINES:])
    if _EMPTY_RE.search(said):
        # Each ffmpeg words it differently ("Empty output", "Output file is empty, ..."); say it plainly.
        return f"no frames came out for this file; ffmpeg said: {said}"
    return said


# --- checking what ffmpeg wrote -------------------------------------------------------------




def _verify(target: _Target, exe: str, timeout: float) -> str | None:
    """None if ``target.tmp`` holds a decodable file with the frames it should; else why not."""
    try:
        if target.tmp.stat().st_size == 0:
            return "ffmpeg wrote an empty file"
    except OSError:
        return "ffmpeg wrote no file"
    frames, problem = count_frames(target.tmp, exe, timeout)
    if problem is not None:
        return f"ffmpeg finished, but the file is broken: {problem}"
    assert frames is not None
    if not target.expect.admits(frames):
        return (
            f"ffmpeg finished, but the file holds {frames} frame{'s' if frames != 1 else ''} "
            f"where {target.expect.describe()} were expected"
        )
    return None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _publish(target: _Target) -> None:
    # fsync before rename: after a power cut the final name holds either nothing or the whole file.
    with open(target.tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(target.tmp, target.final)


def _run_targets(
    frames: np.ndarray, fps: int, targets: list[_Target], exe: str, timeout: float
) -> tuple[dict[str, str | None], _RunOutcome]:
    """Run ffmpeg once for ``targets``; publish the files that came out whole.

    Returns target key -> None on success or the error text. A failed run publishes nothing,
    because ffmpeg may have stopped every output part-way. After a run that exited 0 every file
    is still decoded and its frames counted: some ffmpeg builds exit 0 having written an empty
    file, so the exit status alone never makes an output ok. A broken master publishes nothing.
    """
    try:
        run = _run(frames, fps, targets, exe, timeout)
        results: dict[str, str | None] = {}
        if run.returncode == 0 and not run.timed_out:
            workers = max(1, min(len(targets), os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="i2vd-verify") as pool:
                checked = pool.map(lambda target: _verify(target, exe, timeout), targets)
                results = {target.key: problem for target, problem in zip(targets, checked, strict=True)}
            if results.get(MASTER_KEY) is not None:
                for target in targets:
                    results[target.key] = results[target.key] or "not kept: the master clip was broken"
            for target in targets:
                if results[target.key] is None:
                    try:
                        _publish(target)
                    except OSError as exc:
                        results[target.key] = f"could not move the finished file into place: {exc}"
        else:
            error = _error_text(run, targets, timeout)
            results = {target.key: error for target in targets}
        return results, run
    finally:
        for target in targets:
            _remove(target.tmp)


def _check_frames(frames: np.ndarray, fps: int) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a (F, H, W, 3) array, got shape {getattr(frames, 'shape', None)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    count, height, width, _ = frames.shape
    if count < 1 or height < 2 or width < 2:
        raise ValueError(f"need at least one frame of 2x2 pixels, got shape {frames.shape}")
    if isinstance(fps, bool) or not isinstance(fps, int | np.integer) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    # H.264 in 4:2:0 needs even sizes; dropping the last row/column keeps every pixel where it
    # was (no resampling, no border), and every recipe then sees the same picture as the master.
    return frames[:, : height - height % 2, : width - width % 2]


def _check_stem(stem: str) -> None:
    if not stem or stem in {".", ".."} or "/" in stem or "\0" in stem or (os.sep != "/" and os.sep in stem):
        raise ValueError(f"stem {stem!r} must be a plain file name")


def encode_job(
    frames: np.ndarray,
    fps: int,
    out_dir: Path,
    stem: str,
    recipes: Mapping[str, RecipeConfig],
    *,
    master_options: Mapping[str, str | int] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    ffmpeg: FFmpeg | None = None,
) -> EncodeResult:
    """Write ``out_dir/stem.mp4`` and one file per recipe (``RecipeConfig.file_name``) from ``frames``.

    ``frames`` is (F, H, W, 3) uint8 RGB. Odd sizes lose their last row/column. ``ffmpeg`` is
    the binary to run (``select_ffmpeg``; None: the pinned one). Raises EncodeError only when
    the master clip cannot be made; a failing recipe is reported in the result and costs only
    its own file.
    """
    exe = (ffmpeg or select_ffmpeg(None)).path
    started = time.monotonic()
    frames = _check_frames(frames, fps)
    fps = int(fps)
    _check_stem(stem)
    out_dir = Path(os.path.abspath(out_dir))
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=fps, width=width, height=height)
    token = secrets.token_hex(4)
    extra = {k: str(v) for k, v in (master_options or {}).items()}
    targets = _targets(out_dir, stem, token, clip, recipes, extra)
    by_key = {target.key: target for target in targets}

    results, combined = _run_targets(frames, fps, targets, exe, timeout)
    single_pass = all(error is None for error in results.values())
    if not single_pass and len(targets) > 1:
        # We cannot tell from one ffmpeg error which output broke it, and an output that came out
        # broken from a run that exited 0 may have been hurt by another: redo each failed one alone.
        redo = [target for target in targets if results[target.key] is not None]
        if redo[0].key == MASTER_KEY:
            results.update(_run_targets(frames, fps, [redo.pop(0)], exe, timeout)[0])
        if results[MASTER_KEY] is None:
            for target in redo:
                results.update(_run_targets(frames, fps, [target], exe, timeout)[0])
    fsync_dir(out_dir)

    if results[MASTER_KEY] is not None:
        raise EncodeError(_master_error_message(results[MASTER_KEY]))

    outcomes = {
        target.key: RecipeOutcome(
            name=target.key,
            ok=results.get(target.key) is None,
            path=target.final if results.get(target.key) is None else None,
            error=results.get(target.key),
        )
        for target in targets[1:]
    }
    return EncodeResult(
        master=by_key[MASTER_KEY].final,
        recipes=outcomes,
        seconds=time.monotonic() - started,
        single_pass=single_pass,
        command=combined.argv,
    )


def _master_error_message(detail: str | None) -> str:
    if detail and "No space left on device" in detail:
        hint = (
            "The server's disk is full: the operator needs to free space, "
            "then move your files back into inbox/ to try again."
        )
    else:
        hint = (
            "This is a problem on the server, not with your files: ask the operator to run `i2vd check`, "
            "then move your files back into inbox/ to try again."
        )
    return f"The video file could not be written.\n{hint}\n\nffmpeg said:\n{detail}"


# --- recipe validation ----------------------------------------------------------------------


def _synthetic_clip(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    # Moving gradients rather than flat grey, so palette and scaling filters see real content.
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        shift = 255.0 * i / max(frames, 1)
        clip[i, :, :, 0] = ((x + shift) % 256).astype(np.uint8)
        clip[i, :, :, 1] = np.broadcast_to(y, (height, width)).astype(np.uint8)
        clip[i, :, :, 2] = ((x + y + 2 * shift) % 256).astype(np.uint8)
    return clip


def validate_recipe(
    name: str, recipe: RecipeConfig, *, timeout: float = 60.0, ffmpeg: FFmpeg | None = None
) -> str | None:
    """Run ``recipe`` on a short synthetic clip; return ffmpeg's error message, or None if it works.

    The output is checked as a job's would be (it decodes, with the frames it should have).
    """
    try:
        check_recipe_name(name)
    except ValueError as exc:
        return str(exc)
    frames = _synthetic_clip()
    count, height, width, _ = frames.shape
    clip = ClipInfo(frames=count, fps=8, width=width, height=height)
    try:
        exe = (ffmpeg or select_ffmpeg(None)).path
        with tempfile.TemporaryDirectory(prefix="i2vd-check-") as tmp:
            target = _recipe_target(Path(tmp), "check", secrets.token_hex(4), 0, name, recipe, clip)
            results, _ = _run_targets(frames, clip.fps, [target], exe, timeout)
    except (OSError, ValueError, EncodeError) as exc:
        return str(exc)
    return results[name]


