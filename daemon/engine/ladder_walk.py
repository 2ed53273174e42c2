"""Walking one ``generate`` down the out-of-memory ladder: try, and on running out of memory, try smaller.

``daemon.engine.oom`` says what the ladder is (its rungs and their order, the message when every
one failed, the fault injector, the decode rescue). ``LadderWalk`` drives it for one request:
each try timed and recorded, memory freed between tries, the log lines, and the record of the
run that goes into JOB.json (``DiffusersGenerator.last_run``). A try itself is
``daemon.engine.pipeline_call``'s; the model is held by ``daemon.engine.runner``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.engine.families import Family
from daemon.engine.oom import Ladder, Setting, exhausted_message, first_line, free_memory, is_out_of_memory
from daemon.errors import GenerationError

if TYPE_CHECKING:
    import torch

#: One try: (setting, record to fill in, whether it is the first) -> frames as floats in [0, 1].
Attempt = Callable[[Setting, dict[str, Any], bool], np.ndarray]


class LadderWalk:
    """One request's tries, from the requested setting down the ladder until one fits or none is left."""

    def __init__(
        self,
        requested: Setting,
        ladder: Ladder,
        *,
        family: Family,
        multiple: int,
        device: torch.device,
        log: Any,
    ) -> None:
        self.requested = requested
        self.setting = requested  # the one tried last
        self.attempts: list[dict[str, Any]] = []
        #: True once every rung ran out of memory (``run`` then raised GenerationError).
        self.exhausted = False
        self._ladder = ladder
        self._family = family
        self._multiple = multiple
        self._device = device
        self._log = log

    def run(self, attempt: Attempt) -> np.ndarray:
        """The frames of the first try that does not run out of memory; GenerationError if none fits.

        Errors other than running out of memory propagate at once: they are not retried.
        """
        import torch

        device, family = self._device, self._family
        change: str | None = None
        while True:
            t0 = time.monotonic()
            record: dict[str, Any] = {**asdict(self.setting), "change": change}
            oom: str | None = None
            try:
                video = attempt(self.setting, record, not self.attempts)
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                oom = first_line(exc)
            # Out of the except block: the failed try's tensors (held by the traceback) are gone.
            record.update(seconds=round(time.monotonic() - t0, 3))
            if oom is None:
                record.pop("stage", None)  # where a failed try failed; this one did not
                self.attempts.append({**record, "outcome": "ok"})
                return video
            self.attempts.append({**record, "outcome": "out_of_memory", "error": oom})
            free_memory(device)
            step = self._ladder.next(
                self.setting,
                requested=self.requested,
                multiple=self._multiple,
                can_offload=device.type == "cuda",
                fit_frames=family.fit_frames,
            )
            if step is None:
                self.exhausted = True
                self._log.error("out of memory at every step of the ladder", tried=len(self.attempts))
                tried = [
                    Setting(a["width"], a["height"], a["num_frames"], a["offload"]) for a in self.attempts
                ]
                raise GenerationError(
                    exhausted_message(
                        tried,
                        on_gpu=device.type == "cuda",
                        requested=self.requested,
                        fit_frames=family.fit_frames,
                    )
                )
            failed, (change, self.setting) = self.setting, step
            self._log.warning(
                "out of memory; trying again with smaller settings",
                failed=failed.describe(),
                next=self.setting.describe(),
                step=change,
                error=oom,
            )

    def record(self, engine: Mapping[str, Any], *, ok: bool) -> dict[str, Any]:
        """The run's record for JOB.json: what was made (or last tried), every try, the engine."""
        final, attempts, last = self.setting, self.attempts, self.attempts[-1]
        return {
            "ok": ok,
            "family": self._family.name,
            "prompt_used": self._family.takes_prompt,
            "width": final.width,
            "height": final.height,
            "num_frames": final.num_frames,
            "offload": final.offload,
            "decode_chunk_size": last.get("decode_chunk_size"),
            "vae_tiling": last.get("vae_tiling"),
            "loras": last.get("loras") or None,
            "fallback": len(attempts) > 1,
            "requested": {
                "width": self.requested.width,
                "height": self.requested.height,
                "num_frames": self.requested.num_frames,
            },
            "attempts": attempts,
            "engine": dict(engine),
        }
