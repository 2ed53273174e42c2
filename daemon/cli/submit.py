"""``i2vd submit``: an image and its prompt placed into the inbox safely, checked as the daemon will."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from daemon.cli.common import EXIT_OK, UsageError, settings_of
from daemon.config import describe_config_source, env_overrides, find_config


def _parse_set(pairs: Sequence[str]) -> dict[str, object]:
    import tomllib

    table: dict[str, object] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {pair!r}: write it as KEY=VALUE, for example --set num_frames=16")
        try:
            # A TOML value: 16, 9.5, "text", ["poster", "h264"]; anything else is a plain string.
            table[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = raw
    return table


def cmd_submit(args: argparse.Namespace) -> int:
    from daemon.errors import JobError
    from daemon.folders import moves
    from daemon.folders.names import IMAGE_EXTS, LAST_MARK
    from daemon.job.image import load_image
    from daemon.job.sidecar import read_sidecar

    path = find_config(args.config)
    if path is None and not any(o.key == "paths.inbox" for o in env_overrides()[0]):
        # Without the daemon's config this would fill ./inbox of wherever it was typed, which no
        # daemon watches: the job would wait forever while the command reported success.
        looked = describe_config_source(args.config, None).partition(";")[0]
        raise UsageError(
            f"submit needs the daemon's config to know which inbox it watches: {looked}; "
            "name it with --config FILE or I2VD_CONFIG=FILE"
        )
    _, settings = settings_of(args)
    image = Path(args.image)
    last = Path(args.last) if args.last else None
    for given in (image, last):
        if given is not None and not given.is_file():
            raise UsageError(f"{given}: no such file")
    if last is not None and last.suffix.lower() not in IMAGE_EXTS:
        raise UsageError(f"--last {last}: name the image with its type, e.g. end.jpg or end.png")
    table = {"prompt": args.prompt, **_parse_set(args.set)}
    # Check the user's own images and values exactly as the daemon will, before anything shows in
    # the inbox, so a problem names their file and their options, not a temporary copy.
    for given in (image, last):
        if given is None:
            continue
        try:
            # Resolved: the user's own link to their image is fine here, unlike a link in the inbox.
            load_image(
                given.resolve(),
                max_pixels=settings.limits.max_image_pixels,
                max_bytes=settings.limits.max_image_bytes,
                formats=settings.limits.image_formats,
            )
        except JobError as e:
            raise UsageError(str(e).replace("\n", " ")) from None
    inbox = settings.paths.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=inbox, prefix=".submit-") as tmp:
        sidecar_tmp = Path(tmp) / "job.json"
        sidecar_tmp.write_text(json.dumps(table, ensure_ascii=False))
        try:
            known = set(settings.recipe_table())
            read_sidecar(sidecar_tmp, settings.generation, settings.limits, known, set(settings.loras))
        except JobError as e:
            raise UsageError(_options_problem(str(e), sidecar_tmp.name)) from None
        image_tmp = Path(tmp) / ("image" + image.suffix.lower())
        shutil.copyfile(image, image_tmp)
        last_tmp = Path(tmp) / ("last" + last.suffix.lower()) if last is not None else None
        if last is not None and last_tmp is not None:
            shutil.copyfile(last, last_tmp)
        stem = args.name or image.stem.lstrip("-.") or "job"
        n = 1
        while True:
            name = stem if n == 1 else f"{stem}-{n}"
            if not any(inbox.glob(f"{glob_escape(name)}.*")):
                break
            n += 1
        # The images first, then the sidecar: the pair is complete only once every rename is done.
        moves.move(image_tmp, inbox / f"{name}{image.suffix.lower()}")
        if last is not None and last_tmp is not None:
            moves.move(last_tmp, inbox / f"{name}{LAST_MARK}{last.suffix.lower()}")
        moves.move(sidecar_tmp, inbox / f"{name}.json")
    print(inbox / f"{name}{image.suffix.lower()}", file=args.out)
    return EXIT_OK


def _options_problem(message: str, sidecar_name: str) -> str:
    """A prompt-file error about submit's temporary sidecar, reworded for the options that made it."""
    message = message.replace("\n", " ")
    prefix = f'The prompt file "{sidecar_name}" has a problem: '
    if message.startswith(prefix):
        return "--prompt/--set: " + message[len(prefix) :]
    return message.replace(f'The prompt file "{sidecar_name}"', "The --prompt/--set values").replace(
        f'"{sidecar_name}"', "the --prompt/--set values"
    )


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
