"""Where a job's prompt comes from: its prompt file, the configured default, or the prompt model.

``plan`` decides from what came with the image and ``[prompting] when``; ``settle`` writes the
prompt when the plan asks for one (after every cheap check of the job, before any video work).
The text the model writes goes only into the request and ``JOB.json``, like a user's own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from daemon.config import Settings
from daemon.errors import JobError


@dataclass(frozen=True)
class PromptPlan:
    # "file": the prompt file's; "default": generation.default_prompt; "image": written from the
    # image alone; "rewritten": the user's words rewritten with the image.
    prompt_from: str
    user_prompt: str | None  # the prompt file's own text, if it held any

    @property
    def needs_writer(self) -> bool:
        return self.prompt_from in ("image", "rewritten")


def prompting_on(settings: Settings) -> bool:
    return settings.prompting.when != "never"


def plan(has_sidecar: bool, prompt: str, settings: Settings) -> PromptPlan:
    """The plan for a job whose prompt file held ``prompt`` ("" when empty or absent)."""
    when = settings.prompting.when
    user = prompt if has_sidecar and prompt else None
    if when == "never":
        return PromptPlan("file" if has_sidecar else "default", user)
    if user is None:
        return PromptPlan("image", None)
    return PromptPlan("rewritten" if when == "always" else "file", user)


def settle(
    plan_: PromptPlan, prompt: str, image: Image.Image, writer: Any, family: str, log: Any
) -> tuple[str, str]:
    """The prompt the job uses and where it came from: ``prompt`` as it is, or the writer's.

    Steps: nothing to write: ``prompt``; else write (``PromptWriter.write``); a rewrite that
    fails or comes back empty keeps the user's words; a prompt from the image alone that fails
    fails the job, naming the fix.
    """
    if not plan_.needs_writer:
        return prompt, plan_.prompt_from
    reason = "the prompt model wrote nothing"
    if writer is not None:
        try:
            written = writer.write(image, plan_.user_prompt, family)
        except Exception as e:  # a model error must not take the daemon down: the job decides
            log.exception("the prompt model failed")
            reason = f"the prompt model failed ({type(e).__name__})"
        else:
            log.info(
                "prompt written",
                prompt_from=plan_.prompt_from,
                seconds=round(written.seconds, 2),
                tokens=written.tokens,
            )
            if written.prompt:
                return written.prompt, plan_.prompt_from
    else:
        reason = "no prompt model is loaded"
    if plan_.user_prompt:
        log.warning("keeping the user's prompt", reason=reason)
        return plan_.user_prompt, "file"
    raise JobError(
        f"No prompt could be written from the image: {reason}. Add a text file with the same name as "
        "the image holding the prompt (what should move, and how), then put both files in the inbox again."
    )
