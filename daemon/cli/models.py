"""``i2vd fetch-model`` and ``i2vd prompt``: the models fetched ahead of time; a prompt for an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.cli.common import EXIT_FAILED, EXIT_OK, UsageError, settings_of


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from daemon.engine.adapters import AdapterSpec
    from daemon.engine.fetch import fetch_adapters, fetch_model

    _, settings = settings_of(args)
    m = settings.model
    try:
        path = fetch_model(
            m.id, revision=m.revision, cache_dir=settings.model_cache_dir, dtype=m.dtype, device=m.device
        )
        adapters = fetch_adapters(AdapterSpec.from_config(settings.loras), cache_dir=settings.model_cache_dir)
        prompt_model = None
        if settings.prompting.when != "never":
            from daemon.prompting.fetch import fetch_prompt_model

            prompt_model = fetch_prompt_model(settings.prompting, cache_dir=settings.model_cache_dir)
    except RuntimeError as e:
        print(f"i2vd: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(path, file=args.out)
    for adapter in adapters:
        print(adapter, file=args.out)
    if prompt_model is not None:
        print(prompt_model, file=args.out)
    return EXIT_OK


def cmd_prompt(args: argparse.Namespace) -> int:
    """Print the prompt [prompting] would write for IMAGE (and --prompt): the answer alone on stdout."""
    from daemon.errors import JobError
    from daemon.job.image import load_image
    from daemon.prompting.family import configured_family
    from daemon.prompting.writer import PromptModelError, PromptWriter

    _, settings = settings_of(args)
    limits = settings.limits
    user = (args.prompt or "").strip() or None
    if user is not None and len(user) > limits.max_prompt_chars:
        raise UsageError(
            f"--prompt is {len(user):,} characters; at most {limits.max_prompt_chars:,}"
            " (limits.max_prompt_chars)"
        )
    try:
        image = load_image(
            Path(args.image),
            max_pixels=limits.max_image_pixels,
            max_bytes=limits.max_image_bytes,
            formats=limits.image_formats,
        )
    except JobError as e:
        raise UsageError(str(e)) from None
    family = configured_family(settings)
    writer = PromptWriter(
        settings.prompting, cache_dir=settings.model_cache_dir, max_chars=limits.max_prompt_chars
    )
    try:
        written = writer.write(image, user, family)
    except PromptModelError as e:
        print(f"i2vd: {e}", file=sys.stderr)
        return EXIT_FAILED
    if not written.prompt:
        print("i2vd: the prompt model wrote nothing for this image", file=sys.stderr)
        return EXIT_FAILED
    print(written.prompt, file=args.out)
    return EXIT_OK
