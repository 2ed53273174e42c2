"""What keeps a private Ray (``address = "local"``) to this machine, this user and this daemon.

Ray reads most of its settings from the environment of the process that starts it, and its own
processes (GCS, raylet, agents, workers) inherit that environment, so ``seal`` sets it before
Ray is imported and ``unseal`` puts it back when the daemon lets go of Ray:

- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray takes 127.0.0.1 as the node's address instead of
  the machine's network address, and then binds every listener it opens (GCS, raylet, object
  manager, agents, metrics, workers) to loopback only. Ray 2.60 has no other switch for that
  (``_node_ip_address="127.0.0.1"`` is turned back into the network address), and it must be
  set before ``import ray``: Ray reads it once, at import.
- Token authentication with a fresh token for each start, in the state folder (0700), written
  0600: other users of this machine can reach 127.0.0.1 but cannot read the token. Without it
  Ray 2.60 writes one to ``~/.ray/auth_token`` readable by everyone (umask 022) and prints a
  banner. An operator's own ``RAY_AUTH_MODE`` and token are left as they are.
- ``RAY_USAGE_STATS_ENABLED=0``: Ray does not report usage to its makers over the network.
- ``DASHBOARD_METRIC_PORT=0``, ``AUTOSCALER_METRIC_PORT=0``: the two metrics servers of Ray's head
  take a free port (on loopback) instead of fixed ones (44227, 44217) that another Ray on this
  machine, or a second daemon's, already holds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TOKEN = "ray-token"
# Set for the private Ray; each one's value before ``seal``, put back by ``unseal``.
_SEALED = (
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "RAY_USAGE_STATS_ENABLED",
    "DASHBOARD_METRIC_PORT",
    "AUTOSCALER_METRIC_PORT",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN_PATH",
)


def seal(state_dir: Path) -> dict[str, str | None]:
    """Set the environment for a private Ray (see the module's docstring); what it was before."""
    before = {name: os.environ.get(name) for name in _SEALED}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["DASHBOARD_METRIC_PORT"] = os.environ["AUTOSCALER_METRIC_PORT"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    told = "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ
    if os.environ["RAY_AUTH_MODE"].lower() == "token" and not told:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(write_token(state_dir / TOKEN))
    return before


def unseal(state_dir: Path, before: dict[str, str | None]) -> None:
    """Put the environment back as ``seal`` found it and remove the token it wrote."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with contextlib.suppress(OSError):
        (state_dir / TOKEN).unlink()


def write_token(path: Path) -> Path:
    """A new random token at ``path``, created 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # O_EXCL with O_NOFOLLOW: a file or link someone put there in between is never written through.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path
