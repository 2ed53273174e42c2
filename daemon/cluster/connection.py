"""Joining a Ray cluster, or starting a private one, and saying what it offers.

``RayConnection`` is the coordinator's one handle on Ray itself: ``ray.init`` with the
``[cluster]`` address (``"local"``: a private Ray in its own temporary folder, on loopback only,
the leftovers of a killed daemon's private Ray ended first, see ``daemon.cluster.private`` and
``daemon.cluster.lockdown``), the resources the live nodes offer (for log lines, ``i2vd check``
and the start-up error), how many workers each node has room for, and ``ray.shutdown`` at the
end. It knows nothing of workers or jobs, so the worker pool and the dispatcher never deal with
Ray's start-up and folders.

``ray.init`` takes over the process's signals: on the main thread it sets a SIGTERM handler that
exits at once (code 15), and its C++ core adds a crash handler on SIGTERM that prints a stack.
The daemon's own handlers (warm stop, cold stop, reload) must stay, so they are set again as
soon as ``ray.init`` returns. (``ray.init`` on another thread would leave them alone, but then the
main thread's calls into Ray hang.) A SIGTERM within the seconds ``ray.init`` runs meets Ray's
handler; that stop is passed on to the daemon's handler and the start ends, saying so.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.cluster import lockdown, private
from daemon.config import Settings
from daemon.service.executor import StoppedWhileStarting

# The handlers ``ray.init`` would replace.
_KEPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class RayConnection:
    """``ray.init`` and ``ray.shutdown`` for one executor, and what the cluster's live nodes offer."""

    def __init__(self, settings: Settings, *, ray_options: Mapping[str, Any], log: Any) -> None:
        """``ray_options`` go to ``ray.init`` of a private Ray (``address = "local"``) only."""
        self.settings = settings
        self.config = settings.cluster
        self._ray_options = dict(ray_options)
        self._log = log
        self._temp_dir: Path | None = None
        self._sealed: dict[str, str | None] | None = None
        self._connected = False

    def connect(self) -> None:
        options: dict[str, Any] = {"namespace": "i2vd", "log_to_driver": False, "configure_logging": False}
        if self.config.address == "local":
            # Before Ray is imported: it reads what binds it to loopback only once, at import.
            self._sealed = lockdown.seal(self.settings.state_dir)
            # A private Ray: its own temporary folder, no dashboard, gone when the daemon stops.
            ended = private.reap(self.settings.state_dir)
            if ended:
                self._log.warning("ended what a killed daemon's private Ray left running", pids=ended)
            self._temp_dir = private.make(self.settings.state_dir)
            options.update(
                address="local", include_dashboard=False, _temp_dir=private.ray_dir(self._temp_dir)
            )
            options.update(self._ray_options)
        else:
            options["address"] = self.config.address
        started = time.monotonic()
        _init_keeping_signals(options)
        self._connected = True
        self._log.info(
            "ray connected",
            address=self.config.address,
            seconds=round(time.monotonic() - started, 1),
            resources=self.resources(),
        )

    def close(self) -> None:
        import ray

        if self._connected:
            ray.shutdown()  # a private Ray ("local") stops with it; a joined cluster stays up
            self._connected = False
        if self._temp_dir is not None:
            private.remove(self.settings.state_dir, self._temp_dir)
            self._temp_dir = None
        if self._sealed is not None:
            lockdown.unseal(self.settings.state_dir, self._sealed)
            self._sealed = None

    def resources(self) -> str:
        """What the live nodes offer, in words: nodes, GPUs, CPUs."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        return f"{len(nodes)} node(s), {gpus:g} GPU(s), {cpus:g} CPU(s)"

    def describe(self) -> str:
        """The Ray version, where the cluster is, and what it offers (``i2vd check``)."""
        import ray

        where = "a private Ray on this machine" if self.config.address == "local" else self.config.address
        return f"Ray {ray.__version__}, {where}: {self.resources()}"

    def room_per_node(self) -> dict[str, int]:
        """Workers each live node has room for (``workers = "auto"``): its GPUs / gpus_per_worker,
        or its CPUs / cpus_per_worker when gpus_per_worker = 0, whichever is fewer."""
        import ray

        gpw, cpw = self.config.gpus_per_worker, self.config.cpus_per_worker
        room: dict[str, int] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node["Resources"]
            by_cpu = math.floor(res.get("CPU", 0) / cpw + 1e-9) if cpw > 0 else None
            if gpw > 0:
                n = math.floor(res.get("GPU", 0) / gpw + 1e-9)
                room[node["NodeID"]] = n if by_cpu is None else min(n, by_cpu)
            else:
                room[node["NodeID"]] = by_cpu or 0
        return room

    def shortfall(self) -> str | None:
        """Why no live node has room for even one worker, in one line naming the fix; None when
        one has. Ray itself would keep such a worker pending for ever without a word."""
        import ray

        if any(n > 0 for n in self.room_per_node().values()):
            return None
        gpw, cpw = self.config.gpus_per_worker, self.config.cpus_per_worker
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpus = [r.get("GPU", 0) for r in nodes]
        if gpw > 0 and sum(gpus) == 0:
            return (
                f"the cluster has 0 GPUs; gpus_per_worker = {gpw:g} needs them; set 0 to run workers on CPUs"
            )
        if gpw > 0 and max(gpus) < gpw:
            return (
                f"no machine of the cluster has {gpw:g} GPUs (the most on one is {max(gpus):g});"
                f" gpus_per_worker = {gpw:g} needs them on one machine: lower it"
            )
        cpus = [r.get("CPU", 0) for r in nodes if r.get("GPU", 0) >= gpw] or [0]
        where = "with the GPUs a worker needs " if gpw > 0 else ""
        return (
            f"no machine of the cluster {where}has {cpw:g} CPUs (the most on one is {max(cpus):g});"
            f" cpus_per_worker = {cpw:g} needs them on one machine: lower it"
        )


def _init_keeping_signals(options: dict[str, Any]) -> None:
    """``ray.init(**options)``, and the process's signal handlers set again as they were."""
    import ray

    if threading.current_thread() is not threading.main_thread():
        ray.init(**options)  # Ray sets no handler then, and only the main thread could set ours
        return
    kept = {sig: signal.getsignal(sig) for sig in _KEPT_SIGNALS}
    try:
        ray.init(**options)
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        # Ray's handler met a SIGTERM meant for the daemon: pass it on, and stop starting.
        with contextlib.suppress(Exception):
            ray.shutdown()
        stop = kept[signal.SIGTERM]
        if callable(stop):
            stop(signal.SIGTERM, None)
        raise StoppedWhileStarting("a stop (SIGTERM) came while Ray was starting") from None
    finally:
        # Set from Python, they also replace at the C level the crash handler Ray's core added.
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)
