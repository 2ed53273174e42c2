"""``i2vd run``: the daemon itself, with its executor, listeners and signal handlers."""

from __future__ import annotations

import argparse
import faulthandler
import signal
from types import FrameType
from typing import Any

from daemon import logs
from daemon.cli.common import EXIT_FAILED, EXIT_OK, cannot_start, check_trust, load_generator, settings_of
from daemon.config import Settings, load_settings


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
    path, settings = settings_of(args, log)
    # Before anything is read from the state folder or loaded into the process (the model cache
    # may live in the state folder).
    check_trust(path, settings, log)
    executor: Executor
    if settings.cluster.backend == "ray":
        executor_or_error = _ray_executor(settings)
        if isinstance(executor_or_error, str):
            return cannot_start(executor_or_error)
        # The workers load the model when the service starts; this machine needs no GPU.
        log.info("jobs run on Ray workers", address=settings.cluster.address, model=settings.model.id)
        executor = executor_or_error
    else:
        log.info("loading model", model=settings.model.id, device=settings.model.device)
        try:
            generator = load_generator(settings)
        except Exception as e:
            hint = ""
            if path is None:
                hint = " (no config file was found, so this is the built-in default: name one with --config)"
            elif no_room(e):
                hint = (
                    f" (the disk of the model cache {settings.model_cache_dir} is full: free space there,"
                    " or set [model] cache_dir to a folder on another disk)"
                )
            return cannot_start(f"model {settings.model.id} cannot be loaded: {e}{hint}")
        problem = defaults_problem(generator.info.family, settings.generation.num_frames)
        if problem is not None:
            return cannot_start(problem)
        executor = ThreadExecutor([generator])
    listeners: list[Listener] = [notify.SystemdListener()]
    if settings.metrics.address:
        try:
            listeners.append(MetricsListener(settings.metrics.address))
        except OSError as e:
            return cannot_start(f"metrics.address {settings.metrics.address}: {e}")
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
        return cannot_start(str(e))
    except StoppedWhileStarting as e:
        # A stop is not an error, even one that came before there was anything to stop.
        logs.say(f"stopped before the cluster was ready: {e}; nothing was claimed", level="info")
        return EXIT_OK
    except OSError as e:
        if service.started.is_set():
            raise
        return cannot_start(str(e))  # a folder it cannot make or write, before any job
    log.info("stopped")
    return EXIT_OK
