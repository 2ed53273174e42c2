"""``i2vd check`` with ``[cluster] backend = "ray"``: the cluster, and every worker with its model."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from daemon.config import Settings
from daemon.service.check import Check
from daemon.states import UP


def cluster_checks(settings: Settings) -> Iterator[Check]:
    """Join (or start) the cluster, start the workers as ``i2vd run`` would, list them, let go.

    The model runs on the workers: this machine needs neither a GPU nor the model. A cluster
    without the GPUs (or CPUs) a worker asks for fails at once: check does not wait for machines
    to join."""
    if importlib.util.find_spec("ray") is None:
        yield False, "cluster", 'backend = "ray" but Ray is not installed: pip install "i2v-daemon[cluster]"'
        return
    from daemon.cluster.ray_executor import RayExecutor

    executor = RayExecutor(settings)
    try:
        try:
            executor.start(warm_up=None, wait_for_machines=False)
        except Exception as e:
            yield False, "cluster", str(e)
            for name, state, info in executor.workers():
                yield False, f"worker {name}", _describe(state, info)
            return
        yield True, "cluster", executor.describe_cluster()
        for name, state, info in executor.workers():
            yield state in UP, f"worker {name}", _describe(state, info)
    finally:
        executor.close()


def _describe(state: str, info: object) -> str:
    if info is None:
        return f"{state}, not answering yet"
    host, device = getattr(info, "host", "?"), getattr(info, "device", "?")
    model = getattr(info, "model", None)
    if model is None:
        return f"on {host} ({device}): cannot load the model: {getattr(info, 'error', '?')}"
    seconds = getattr(info, "load_seconds", 0.0)
    return f"on {host}, {device}: model {model.model_id} loaded in {seconds:.1f} s"
