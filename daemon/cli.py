"""The ``i2vd`` command line.

argparse (standard library) is enough for a handful of sub-commands, and its usage errors
already exit 2 as the contract asks; a CLI framework would add a dependency for nothing.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from daemon import __version__, logs
from daemon.config import (
    ConfigError,
    Settings,
    describe_config_source,
    env_overrides,
    find_config,
    load_settings,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake on the command line or in the configuration: exit 2 with one line."""


def _cannot_start(reason: str) -> int:
    """``run`` could not start (the model does not load, a recipe is broken, the folders are taken):
    one plain line on stderr with the reason, which names the fix (journald files it as an error),
    and exit 2, as a configuration error does."""
    logs.say(f"cannot start: {reason}")
    return EXIT_USAGE


def _settings(args: argparse.Namespace, log: Any = None) -> tuple[Path | None, Settings]:
    """The config file found (None: built-in defaults) and the settings, once they load.

    Then says which file that was (or where it looked), which ``I2VD_`` variables override it and
    which are no setting at all: on stderr (stdout stays for what scripts read), or as log lines
    for ``run``. A config that fails says so in its one error line instead.
    """
    path = find_config(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    _announce(args, path, log)
    return path, settings


def _announce(args: argparse.Namespace, path: Path | None, log: Any = None) -> None:
    overrides, warnings = env_overrides()
    source = describe_config_source(args.config, path)
    variables = [o.var for o in overrides]
    if log is None:
        extra = f"; overridden by {', '.join(variables)}" if variables else ""
        print(f"i2vd: {source}{extra}", file=sys.stderr)
        for warning in warnings:
            print(f"i2vd: warning: {warning}", file=sys.stderr)
    else:
        fields: dict[str, Any] = {"overridden_by": variables} if variables else {}
        if path is None:
            log.warning(source, **fields)
        else:
            log.info("config", file=str(path.absolute()), **fields)
        for warning in warnings:
            log.warning(warning)


def _check_trust(path: Path | None, settings: Settings, log: Any) -> None:
    """Refuse (UsageError naming the fix) a config or state folder someone else could change;
    make the state folder private; warn when the config's secrets can be read by others."""
    from daemon.folders import trust

    try:
        if path is not None:
            trust.check_config(path)
        trust.secure_state(settings.state_dir)
    except trust.Untrusted as e:
        raise UsageError(f"cannot start: {e}") from None
    hooks = settings.webhooks
    if path is not None and (hooks.on_done or hooks.on_failed or hooks.on_folder_done):
        exposed = trust.config_exposed(path)
        if exposed is not None:
            log.warning(exposed)


def _load_generator(settings: Settings):  # type: ignore[no-untyped-def]
    from daemon.engine.generator import load_generator
    from daemon.engine.options import EngineOptions

    return load_generator(
        settings.model.id,
        revision=settings.model.revision,
        device=settings.model.device,
        dtype=settings.model.dtype,
        cache_dir=settings.model_cache_dir,
        options=EngineOptions.from_config(settings.model, settings.loras),
        family=settings.model.family,
    )


def _ray_executor(settings: Settings) -> Any:
    """The Ray executor, or why it cannot be made (Ray not installed) in one line."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return (
            '[cluster] backend = "ray" needs Ray, which is not installed here; install it with'
            ' pip install "i2v-daemon[cluster]" (the same Ray version on every machine of the cluster)'
        )
    from daemon.cluster.ray_executor import RayExecutor

    return RayExecutor(settings)


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.engine.families import defaults_problem
    from daemon.folders.fsops import no_room
    from daemon.listeners import systemd as notify
    from daemon.listeners.events import Listener
    from daemon.listeners.metrics import MetricsListener
    from daemon.listeners.webhooks import WebhookSender
    from daemon.service.executor import Executor, StoppedWhileStarting, ThreadExecutor
    from daemon.service.loop import DaemonLocked, Service, StartupError

    # A watchdog SIGABRT (hung generation) then prints every thread's stack to the journal.
    faulthandler.enable()
    log = logs.get()
    path, settings = _settings(args, log)
    # Before anything is read from the state folder or loaded into the process (the model cache
    # may live in the state folder).
    _check_trust(path, settings, log)
    executor: Executor
    if settings.cluster.backend == "ray":
        executor_or_error = _ray_executor(settings)
        if isinstance(executor_or_error, str):
            return _cannot_start(executor_or_error)
        # The workers load the model when the service starts; this machine needs no GPU.
        log.info("jobs run on Ray workers", address=settings.cluster.address, model=settings.model.id)
        executor = executor_or_error
    else:
        log.info("loading model", model=settings.model.id, device=settings.model.device)
        try:
            generator = _load_generator(settings)
        except Exception as e:
            hint = ""
            if path is None:
                hint = " (no config file was found, so this is the built-in default: name one with --config)"
            elif no_room(e):
                hint = (
                    f" (the disk of the model cache {settings.model_cache_dir} is full: free space there,"
                    " or set [model] cache_dir to a folder on another disk)"
                )
            return _cannot_start(f"model {settings.model.id} cannot be loaded: {e}{hint}")
        problem = defaults_problem(generator.info.family, settings.generation.num_frames)
        if problem is not None:
            return _cannot_start(problem)
        executor = ThreadExecutor([generator])
    listeners: list[Listener] = [notify.SystemdListener()]
    if settings.metrics.address:
        try:
            listeners.append(MetricsListener(settings.metrics.address))
        except OSError as e:
            return _cannot_start(f"metrics.address {settings.metrics.address}: {e}")
    if (hooks := WebhookSender.from_settings(settings)) is not None:
        listeners.append(hooks)
    service = Service(
        settings,
        executor,
        watch=not args.once,
        # One small generation at start, so the first user job is not the slow one.
        warm_up=settings.model.warmup and not args.once,
        reload=lambda: load_settings(path),
        listeners=listeners,
    )

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the first signal is a warm stop (finish the current job), the
        # second a cold one (interrupt it; its files go back to the inbox). The service's
        # scanner thread logs what will happen and tells systemd.
        service.request_stop()

    def on_hup(signum: int, _frame: FrameType | None) -> None:
        service.reload_requested.set()
        service.wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        if args.once:
            results = service.run_once()
            failed = [r for r in results if not r.ok or r.recipe_errors]
            log.info("run --once finished", jobs=len(results), failed=len(failed))
            return EXIT_FAILED if failed else EXIT_OK
        service.run()
    except (DaemonLocked, StartupError) as e:
        return _cannot_start(str(e))
    except StoppedWhileStarting as e:
        # A stop is not an error, even one that came before there was anything to stop.
        logs.say(f"stopped before the cluster was ready: {e}; nothing was claimed", level="info")
        return EXIT_OK
    except OSError as e:
        if service.started.is_set():
            raise
        return _cannot_start(str(e))  # a folder it cannot make or write, before any job
    log.info("stopped")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from daemon.service.check import local_checks, run_checks

    path, settings = _settings(args)
    if settings.cluster.backend == "ray":
        from daemon.cluster.check import cluster_checks

        machine_checks = cluster_checks
    else:
        machine_checks = functools.partial(local_checks, load_generator=_load_generator)
    ok = True
    for passed, what, detail in run_checks(settings, machine_checks, config=path):
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'}  {what}: {detail}", file=args.out, flush=True)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from daemon.engine.adapters import AdapterSpec
    from daemon.engine.fetch import fetch_adapters, fetch_model

    _, settings = _settings(args)
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

    _, settings = _settings(args)
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


def cmd_recipes(args: argparse.Namespace) -> int:
    _, settings = _settings(args)
    defaults = set(settings.output.default_recipes)
    for name, recipe in sorted(settings.recipe_table().items()):
        mark = "*" if name in defaults else " "
        print(f"{mark} {name:<12} .{recipe.ext:<5} {recipe.description}", file=args.out)
    print("(* = made for every job unless its prompt file lists other recipes)", file=args.out)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.service.loop import folders_of
    from daemon.service.status_file import read_status, render

    _, settings = _settings(args)
    folders = folders_of(settings)
    status = read_status(folders.state, outputs=folders.outputs, failed=folders.failed)
    if args.json:
        print(json.dumps(status, indent=2), file=args.out)
    else:
        print(render(status), file=args.out)
    return EXIT_OK if status.get("running") else EXIT_FAILED


def _controls(args: argparse.Namespace) -> tuple[Any, Settings]:
    from daemon.service import controls

    _, settings = _settings(args)
    return controls, settings


def _daemon_note(settings: Settings) -> str:
    from daemon.service.lock import lock_held

    if lock_held(settings.state_dir):
        return ""
    return " (the daemon is not running now; this holds when it starts)"


def cmd_pause(args: argparse.Namespace) -> int:
    from datetime import datetime

    controls, settings = _controls(args)
    try:
        p, new = controls.pause(settings.state_dir, controls.invoking_user(), datetime.now().astimezone())
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    was = "" if new else "already "
    print(
        f"{was}paused since {p.since} by {p.by}: the jobs in progress finish, no new job starts until "
        f"i2vd resume{_daemon_note(settings)}",
        file=args.out,
    )
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    controls, settings = _controls(args)
    try:
        was = controls.resume(settings.state_dir)
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    if was is None:
        print("not paused: new jobs start as they come", file=args.out)
    else:
        print(f"resumed (paused since {was.since} by {was.by}): new jobs start again", file=args.out)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    controls, settings = _controls(args)
    target = str(args.job).strip()
    if not target or "\0" in target or len(target) > 512:
        raise UsageError("name a job: NAME (as dropped), FOLDER/NAME, or the JOB name status shows")
    try:
        controls.request_cancel(settings.state_dir, target, controls.invoking_user())
    except controls.ControlError as e:
        raise UsageError(str(e)) from None
    print(
        f"asked the daemon to cancel {target}: its files go to failed/ with an error.txt saying so; "
        f"the daemon's log says what it found{_daemon_note(settings)}",
        file=args.out,
    )
    return EXIT_OK


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
    _, settings = _settings(args)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video hot folder daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--config", help="config file (default: $I2VD_CONFIG, ./config.toml, /etc/i2vd/config.toml)"
        )
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "watch the inbox and make clips until stopped")
    run.add_argument(
        "--once", action="store_true", help="process every job ready now, then exit (1 if any failed)"
    )
    add("check", cmd_check, "check config, folders, ffmpeg, recipes, device and model")
    status = add("status", cmd_status, "show the current job, the queue and recent results")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    submit = add("submit", cmd_submit, "place an image and its prompt into the inbox safely")
    submit.add_argument("image", help="the image file")
    submit.add_argument("--prompt", required=True, help="what should move, and how")
    submit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sidecar value, e.g. --set num_frames=16 (repeatable)",
    )
    submit.add_argument("--name", help="job name (default: the image's name)")
    submit.add_argument(
        "--last",
        metavar="IMAGE",
        help="the frame the clip ends on (only models that take one: see docs/models.md)",
    )
    add("recipes", cmd_recipes, "list the recipes")
    add(
        "pause",
        cmd_pause,
        "start no new job until i2vd resume (the jobs in progress finish; it lasts across restarts)",
    )
    add("resume", cmd_resume, "start new jobs again after i2vd pause")
    cancel = add("cancel", cmd_cancel, "cancel a waiting or running job; its files go to failed/")
    cancel.add_argument(
        "job", metavar="NAME|JOB", help="the image's name (cat, team/cat) or the JOB name status shows"
    )
    add("fetch-model", cmd_fetch_model, "download the configured model into the cache ahead of time")
    prompt = add("prompt", cmd_prompt, "print the prompt [prompting] would write for an image")
    prompt.add_argument("image", help="the image file")
    prompt.add_argument("--prompt", help="the user's own words, rewritten with the image")
    return parser


def _answers_only() -> TextIO:
    """The stream for the command's answer: the real stdout. From now on whatever else writes to
    stdout (a library's print, the processes Ray starts, which inherit it) lands on stderr, so a
    script reading stdout gets the answer and nothing else."""
    try:
        sys.stdout.flush()
        answer_fd = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptors (an embedder's streams)
        return sys.stdout
    return os.fdopen(
        answer_fd,
        "w",
        buffering=1 if sys.stdout.line_buffering else -1,
        encoding=sys.stdout.encoding,
        errors=sys.stdout.errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = _answers_only()
    if args.command == "run":
        logs.configure()
    else:
        # A person (or a script) waits for the answer: the log says only what went wrong, in plain
        # lines on stderr, not the service's JSON events.
        logs.configure(plain=True, level="warning")
    try:
        code = int(args.func(args))
        args.out.flush()  # a reader that left shows up here, not in the interpreter's last flush
        return code
    except UsageError as e:
        print(f"i2vd: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`i2vd status | head -3`): that is its choice, not an error to report.
        # Point the answer's stream at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), args.out.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
