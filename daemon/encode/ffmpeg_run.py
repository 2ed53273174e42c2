"""One ffmpeg run over a set of outputs: the frames piped in, every file checked, the whole ones kept.

``run_targets`` starts ffmpeg on a graph of ``daemon.encode.onepass_graph``, writes the raw frames into
its stdin one at a time (its stderr drained on a thread of its own, a timer killing a run that
hangs), then decodes every file it wrote and counts the frames (``daemon.encode.ffmpeg``) before
renaming it from its temporary dot-name into place. A failed run publishes nothing, and its
error is ffmpeg's own last lines, in the final file names. The encoder and recipe validation
both run ffmpeg through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from daemon.encode.ffmpeg import ADDRESS_RE, NOISE_RE, count_frames
from daemon.encode.onepass_graph import MASTER_KEY, Target, build_command

# ffmpeg's last lines of stderr an error message keeps.
_ERROR_LINES = 4


@dataclass(frozen=True)
class RunOutcome:
    """How one ffmpeg run ended, its stderr, and its argv (for the job's log)."""

    returncode: int | None
    stderr: list[str]
    argv: list[str]
    timed_out: bool


def _drain(stream: IO[bytes], sink: deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            sink.append(line)
    stream.close()


def _run(frames: np.ndarray, fps: int, targets: list[Target], exe: str, timeout: float) -> RunOutcome:
    _, height, width, _ = frames.shape
    command = build_command(width, height, fps, targets)
    argv = list(command.compile(cmd=exe))
    stderr: deque[str] = deque(maxlen=200)
    try:
        proc = command.run_async(cmd=exe, pipe_stdin=True, pipe_stderr=True)
    except OSError as exc:
        return RunOutcome(None, [f"could not start ffmpeg: {exc}"], argv, False)
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
    return RunOutcome(returncode, list(stderr), argv, timed_out.is_set())


_EMPTY_RE = re.compile(r"Empty output|Output file is empty|received no packets", re.IGNORECASE)


def _error_text(run: RunOutcome, targets: list[Target], timeout: float) -> str:
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


def _verify(target: Target, exe: str, timeout: float) -> str | None:
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


def _publish(target: Target) -> None:
    # fsync before rename: after a power cut the final name holds either nothing or the whole file.
    with open(target.tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(target.tmp, target.final)


def run_targets(
    frames: np.ndarray, fps: int, targets: list[Target], exe: str, timeout: float
) -> tuple[dict[str, str | None], RunOutcome]:
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
