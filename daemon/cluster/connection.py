"""Joining a Ray cluster, or starting a private one, and saying what it offers.

``RayConnection`` is the coordinator's one handle on Ray itself: ``ray.init`` with the
``[cluster]`` address (``"local"``: a private Ray in its own temporary folder, the leftovers of
a killed daemon's private Ray ended first, see ``daemon.cluster.private``), the resources the
live nodes offer (for log lines, ``i2vd check`` and the start-up error), how many workers each
node has room for, and ``ray.shutdown`` at the end. It knows nothing of workers or jobs, so the
worker pool and the dispatcher never deal with Ray's start-up and folders.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.cluster import private
from daemon.config import Settings


class RayConnection:
    """``ray.init`` and ``ray.shutdown`` for one executor, and what the cluster's live nodes offer."""

    def __init__(self, settings: Settings, *, ray_options: Mapping[str, Any], log: Any) -> None:
        """``ray_options`` go to ``ray.init`` of a private Ray (``address = "local"``) only."""
        self.settings = settings
        self.config = settings.cluster
        self._ray_options = dict(ray_options)
        self._log = log
        self._temp_dir: Path | None = None
        self._connected = False

    def connect(self) -> None:
        import ray

        options: dict[str, Any] = {"namespace": "i2vd", "log_to_driver": False, "configure_logging": False}
        if self.config.address == "local":
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
        ray.init(**options)
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
