"""Per-step progress for pipelines that have no ``callback_on_step_end``.

Their denoising loops call ``progress_bar(total=steps).update()`` after every step, so that is where
``StepProgressMixin`` hooks in: mixed into our subclass of such a pipeline (I2VGen-XL, HunyuanVideo
1.5), it reports each step to ``step_callback``, which the family names as its ``step_hook``.
"""

from __future__ import annotations

from typing import Any

from daemon.engine.family_spec import StepCallback


class StepReporter:
    """Stands in for the tqdm bar of the denoising loop: ``update()`` reports the step instead.

    No tqdm at all during generation: the daemon logs to journald, where a redrawn bar is noise.
    An exception raised by the callback propagates out of the denoising loop, which stops the job.
    """

    def __init__(self, total: int, on_step: StepCallback | None) -> None:
        self.total = total
        self.done = 0
        self._on_step = on_step

    def __enter__(self) -> StepReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._on_step is not None:
            self._on_step(self.done, self.total)


class StepProgressMixin:
    """Put first among the bases of a diffusers pipeline subclass (it overrides ``progress_bar``)."""

    # Set by the caller around one ``__call__``; called as on_step(completed_steps, total_steps).
    step_callback: StepCallback | None = None

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        if iterable is not None or total is None:
            return super().progress_bar(iterable=iterable, total=total)  # type: ignore[misc]
        return StepReporter(total, self.step_callback)
