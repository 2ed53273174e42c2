"""Out of memory: recognising it, freeing what can be freed, and planning the next, smaller try.

Owns the ladder (``model.oom_ladder``: lower resolution, fewer frames, CPU offload) that
``daemon.engine.ladder_walk`` walks down, the decode rescue (``rescued_decode``: a failed VAE
decode repeated in halves, then tiled, inside the pipeline's own call) and the words of the
``error.txt`` when nothing is left. Also the fault injector ``InjectOOM`` (or the
``I2VD_INJECT_OOM`` variable), which raises a genuine ``torch.OutOfMemoryError`` from inside the
real pipeline above a size: how tests (and operators rehearsing) reach these paths without a
GPU. torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from daemon.sizing import clip_size

LOWER_RESOLUTION = "lower_resolution"
FEWER_FRAMES = "fewer_frames"
CPU_OFFLOAD = "cpu_offload"
RUNGS = (LOWER_RESOLUTION, FEWER_FRAMES, CPU_OFFLOAD)

DEFAULT_LADDER = (LOWER_RESOLUTION, FEWER_FRAMES, CPU_OFFLOAD)
# Short sides the ladder may fall back to (only those below the job's own are ever used).
DEFAULT_SHORT_SIDES = (768, 640, 512, 384)
DEFAULT_MIN_FRAMES = 8

ENV_VAR = "I2VD_INJECT_OOM"

# The texts PyTorch and the C library use for an allocation that failed.
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's ``torch.OutOfMemoryError`` and for a RuntimeError that says it ran out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)


def first_line(exc: BaseException) -> str:
    """An error's first line, short enough for a log field and JOB.json."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def free_memory(device: Any) -> None:
    """Collect garbage and give the CUDA allocator's cached blocks back, so the next try starts clean.

    Call it *after* leaving the ``except`` block: the exception's traceback keeps the failed try's
    tensors alive until then.
    """
    gc.collect()
    import torch

    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.empty_cache()


class FitFrames(Protocol):
    """``fit_frames(n, at_least=m)``: the frame count nearest below ``n`` that the model takes."""

    def __call__(self, n: int, *, at_least: int = 1) -> int: ...


@dataclass(frozen=True)
class Setting:
    """What one try generates: the clip's size and length, and where the model's weights live."""

    width: int
    height: int
    num_frames: int
    offload: str  # "none" | "model" | "sequential" | "group"

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def describe(self) -> str:
        text = f"{self.width}x{self.height} with {self.num_frames} frames"
        return text + (f" ({self.offload} offload)" if self.offload != "none" else "")


@dataclass(frozen=True)
class Ladder:
    """The configured way down: rungs in order, the fall-back short sides and the fewest frames."""

    rungs: tuple[str, ...] = DEFAULT_LADDER
    short_sides: tuple[int, ...] = DEFAULT_SHORT_SIDES
    min_frames: int = DEFAULT_MIN_FRAMES

    def __post_init__(self) -> None:
        unknown = [r for r in self.rungs if r not in RUNGS]
        if unknown:
            raise ValueError(f"unknown oom_ladder step(s) {unknown}; known: {', '.join(RUNGS)}")
        if any(s < 1 for s in self.short_sides) or self.min_frames < 1:
            raise ValueError("oom short sides and min_frames must be at least 1")

    def next(
        self,
        current: Setting,
        *,
        requested: Setting,
        multiple: int,
        can_offload: bool,
        fit_frames: FitFrames | None = None,
    ) -> tuple[str, Setting] | None:
        """The first rung that still makes ``current`` smaller, and the setting it gives; None at the bottom.

        Smaller sizes keep the aspect ratio of the ``requested`` clip and are multiples of ``multiple``;
        fewer frames are a count ``fit_frames`` (``Family.fit_frames``) accepts.
        """
        for rung in self.rungs:
            nxt = self._apply(
                rung, current, requested, multiple=multiple, can_offload=can_offload, fit_frames=fit_frames
            )
            if nxt is not None:
                return rung, nxt
        return None

    def _apply(
        self,
        rung: str,
        cur: Setting,
        req: Setting,
        *,
        multiple: int,
        can_offload: bool,
        fit_frames: FitFrames | None,
    ) -> Setting | None:
        if rung == LOWER_RESOLUTION:
            for short in sorted(self.short_sides, reverse=True):
                width, height = clip_size(req.width, req.height, short_side=short, multiple=multiple)
                if min(width, height) < cur.short_side:
                    return replace(cur, width=width, height=height)
            return None
        if rung == FEWER_FRAMES:
            frames = max(self.min_frames, cur.num_frames // 2)
            if fit_frames is not None:
                frames = fit_frames(frames, at_least=self.min_frames)
            return replace(cur, num_frames=frames) if frames < cur.num_frames else None
        if rung == CPU_OFFLOAD:
            return replace(cur, offload="model") if can_offload and cur.offload == "none" else None
        raise AssertionError(rung)  # __post_init__ rejects unknown rungs


def exhausted_message(
    tried: Sequence[Setting], *, on_gpu: bool, requested: Setting, fit_frames: FitFrames | None = None
) -> str:
    """error.txt for a job that ran out of memory at every rung: what was tried and what to lower.

    ``fit_frames`` (``Family.fit_frames``) keeps the suggested frame count one the model takes.
    """
    where = "The GPU" if on_gpu else "The computer"
    sizes = "; ".join(s.describe() for s in tried)
    smallest = tried[-1] if tried else requested
    advice = []
    if requested.short_side > 512:
        advice.append('a lower resolution (resolution = "512p" in the prompt file)')
    fewer = max(2, smallest.num_frames // 2)
    if fit_frames is not None:
        fewer = fit_frames(fewer)
    if fewer < smallest.num_frames:
        advice.append(f"fewer frames (for example num_frames = {fewer})")
    fix = (
        f"Ask for {' and '.join(advice)}, then put the image and its prompt file in the inbox again."
        if advice
        else "This clip is already as small as i2vd makes them."
    )
    operator = (
        'ask the operator to close other programs using the GPU, or to set model.offload = "model" in'
        " the daemon's config."
        if on_gpu
        else "ask the operator to close other programs or to add memory."
    )
    return (
        f"{where} ran out of memory making this clip, even after trying smaller settings "
        f"(tried: {sizes}). {fix} If small clips fail too, the machine is short of memory: {operator}"
    )


class InjectOOM:
    """Fault injector for tests: raise a real ``torch.OutOfMemoryError`` from inside the pipeline.

    - ``above``: the denoiser (UNet or transformer) raises when the try's clip has more than this many
      ``width * height * frames`` (so the ladder has to go down far enough, rung by rung);
    - ``decode_above``: the VAE decoder raises when one call is given more than this many latent
      pixels (``frames * height * width`` of the latents it receives), to rehearse the decode rescue:
      halving the frames decoded at once and tiling both make the calls smaller.

    ``attach(pipe, denoiser, pixels)`` installs it on a pipeline and returns a function that removes
    it. Set it on a generator as ``generator.inject_oom = InjectOOM(above=...)``, or for a whole
    daemon process with the environment variable ``I2VD_INJECT_OOM="above=N,decode_above=M"``
    (either part optional). Never set it in production: jobs that would fit behave as if they did not.
    """

    def __init__(self, above: int | None = None, decode_above: int | None = None) -> None:
        if above is None and decode_above is None:
            raise ValueError("InjectOOM needs above=, decode_above= or both")
        self.above = above
        self.decode_above = decode_above
        self.raised = 0  # how many errors it raised: tests check the ladder really ran

    def __repr__(self) -> str:
        return f"InjectOOM(above={self.above}, decode_above={self.decode_above})"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> InjectOOM | None:
        """The injector ``I2VD_INJECT_OOM`` asks for, or None when it is unset or empty."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        if not raw:
            return None
        values: dict[str, int] = {}
        for part in raw.split(","):
            key, eq, number = part.strip().partition("=")
            if not eq and key.isdigit():  # a bare number means above=N
                key, number = "above", key
            if key not in ("above", "decode_above") or not number.strip().isdigit():
                raise ValueError(
                    f"{ENV_VAR}={raw!r}: write it as 'above=PIXELS_TIMES_FRAMES' and/or"
                    " 'decode_above=LATENT_PIXELS', for example 'above=4000000,decode_above=4096'"
                )
            values[key] = int(number)
        return cls(**values)

    def attach(self, pipe: Any, denoiser: str, pixels: int) -> Callable[[], None]:
        """Install on ``pipe`` for one try of ``pixels`` = width * height * frames; returns the remover."""
        import torch

        handles = []

        def denoiser_hook(_module: Any, _args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
            if self.above is not None and pixels > self.above:
                self._raise(torch, f"{pixels} pixel-frames")

        def decode_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            z = args[0] if args else next(iter(kwargs.values()))
            # (N, C, h, w) for the 2-D decoders, (B, C, F, h, w) for the video ones: all but channels.
            size = math.prod(z.shape) // z.shape[1]
            if self.decode_above is not None and size > self.decode_above:
                self._raise(torch, f"decoding {size} latent pixels at once")

        handles.append(getattr(pipe, denoiser).register_forward_pre_hook(denoiser_hook, with_kwargs=True))
        handles.append(pipe.vae.decoder.register_forward_pre_hook(decode_hook, with_kwargs=True))

        def detach() -> None:
            for handle in handles:
                handle.remove()

        return detach

    def _raise(self, torch: Any, what: str) -> None:
        self.raised += 1
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB ({what}; simulated by i2vd's InjectOOM)"
        )


@dataclass
class DecodeRescue:
    """What ``rescued_decode`` had to do: the most frames decoded at once (tiling shows on the VAE)."""

    limit: int | None = None  # None: never had to split a decode
    calls: int = 0


@contextlib.contextmanager
def rescued_decode(
    vae: Any, *, device: Any, log: Any, on_first: Callable[[], None]
) -> Iterator[DecodeRescue]:
    """Inside this block ``vae.decode`` survives running out of memory; the denoised latents are kept.

    A decode that fails is repeated in halves (the 2-D decoders get frames as a batch: I2VGen-XL,
    SVD), down to one frame, each later call taking no more than what worked; then with the VAE's
    tiling on, where it has tiling; only then does the error go on to the ladder. ``on_first`` is
    called at the first decode (the engine notes the stage). Wraps the pipeline's own decode, so
    whatever the pipeline does around it (unscaling, timestep conditioning, post-processing) stays
    diffusers' code, for every family.
    """
    import torch

    state = DecodeRescue()
    original = vae.decode
    tiling_was = getattr(vae, "use_tiling", None)

    def decode(z: Any, *args: Any, **kwargs: Any) -> Any:
        state.calls += 1
        if state.calls == 1:
            on_first()
        splittable = z.dim() == 4
        n = int(z.shape[0]) if splittable else 1
        outs: list[Any] = []
        i = 0
        while i < n:
            size = min(n - i, state.limit or n) if splittable else 1
            piece = z[i : i + size] if splittable else z
            kw = {**kwargs, "num_frames": size} if splittable and "num_frames" in kwargs else kwargs
            error: str | None = None
            try:
                out = original(piece, *args, **kw)
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                error = first_line(exc)
            if error is None:
                outs.append(out)
                i += size
                continue
            # Out of the except block: the failed call's tensors are gone with its traceback.
            free_memory(device)
            if size > 1:
                state.limit = (size + 1) // 2
            elif tiling_was is not None and not vae.use_tiling:
                vae.enable_tiling()
            else:
                raise torch.OutOfMemoryError(f"out of memory decoding one frame, tiled: {error}")
            log.warning(
                "out of memory decoding the frames; decoding in smaller pieces",
                decode_chunk_size=state.limit,
                vae_tiling=bool(getattr(vae, "use_tiling", False)),
            )
        return outs[0] if len(outs) == 1 else _concat(outs)

    vae.decode = decode
    try:
        yield state
    finally:
        del vae.decode  # the class's method again
        if tiling_was is not None and vae.use_tiling != tiling_was:
            vae.disable_tiling()


def _concat(outs: list[Any]) -> Any:
    """Join decoder outputs of consecutive pieces: ``(sample,)`` tuples or ``DecoderOutput``s."""
    import torch

    if isinstance(outs[0], tuple):
        return (torch.cat([o[0] for o in outs]),)
    return type(outs[0])(sample=torch.cat([o.sample for o in outs]))
