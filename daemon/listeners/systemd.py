"""The systemd notify protocol (``sd_notify``): tell the service manager we are ready, alive, busy.

Written here directly rather than through a library: the protocol is one ``KEY=VALUE`` text
datagram sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace), which is a dozen lines of standard library. ``sdnotify`` on PyPI has
had no release since 2017, ``systemd-python`` needs libsystemd headers and a compiler to
install, and neither knows ``MONOTONIC_USEC``, which ``Type=notify-reload`` wants.

Every function is a no-op (returns False) when not started by systemd, so the daemon
runs the same from a terminal, and a failed send is never an error: the notification is
advisory and the generation loop must not die because journald or PID 1 is busy.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import logs, states
from daemon.listeners.events import JobFinished
from daemon.states import DaemonState

# What ``vsock:`` and other exotic addresses would need is not worth carrying: we only run
# as a local service, where NOTIFY_SOCKET is always a path or an abstract name.


def _address() -> str | bytes | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte instead of the "@".
        return b"\0" + addr[1:].encode()
    if addr.startswith("/"):
        return addr
    return None


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ...) as one datagram; True if it was sent."""
    addr = _address()
    if addr is None:
        return False
    # A newline would start a new field: a STATUS text must never forge another command.
    message = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, addr)
    except OSError as e:
        logs.get().debug("systemd notify failed", error=str(e))
        return False
    return True


def ready() -> bool:
    """Start-up is complete (model loaded, folders ready): systemd marks the unit active."""
    return notify("READY=1")


def status(text: str) -> bool:
    """The one-line status ``systemctl status`` shows."""
    return notify(f"STATUS={text}")


def stopping(text: str | None = None) -> bool:
    """A stop has begun (a warm stop can take minutes: say so rather than look hung)."""
    return notify("STOPPING=1", *([f"STATUS={text}"] if text else []))


def reloading() -> bool:
    """A reload (SIGHUP) has begun; call ``ready()`` when it is done.

    systemd >= 253 (``Type=notify-reload``) wants the CLOCK_MONOTONIC time of the request
    alongside, to tell this reload from an earlier one; older versions ignore the field.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def _watchdog_usec() -> int | None:
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    # WATCHDOG_PID is set when the watchdog is meant for one process; a child that inherited
    # our environment (ffmpeg, a worker) must not keep us alive in our place.
    if pid and pid != str(os.getpid()):
        return None
    return usec if usec > 0 else None


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec, as systemd advises); None if off."""
    usec = _watchdog_usec()
    return usec / 2_000_000 if usec is not None else None


def watchdog() -> bool:
    """Tell systemd the main loop is alive; sent only when the watchdog is on and meant for us."""
    if _watchdog_usec() is None:
        return False
    return notify("WATCHDOG=1")


def status_line(status: dict[str, Any]) -> str:
    """The status.json content in one line: ``working on JOB, step 12/50, 3 queued``."""
    state = str(status.get("state", "unknown"))
    queued = f"{status.get('queue_length', 0)} queued"
    paused = status.get("paused")
    hours = status.get("active_hours")
    if isinstance(paused, dict):
        queued += f", paused by {paused.get('by')} since {paused.get('since')}"
    elif isinstance(hours, dict) and not hours.get("open"):
        queued += f", outside active hours {hours.get('window')}"
    current = status.get("current")
    if current and current.get("job"):
        total = current.get("total")
        progress = states.progress(current.get("step"), total)
        eta = current.get("eta_seconds")
        running = bool(total) and current.get("step", 0) < total
        left = f", about {eta:.0f} s left" if isinstance(eta, int | float) and running else ""
        return f"working on {current['job']}, {progress}{left}, {queued}"
    if state == DaemonState.STOPPED:
        return "stopped"
    encoding = status.get("encoding") or []
    if encoding:
        # The GPU is free but the last clip is still being encoded (and filed).
        more = f" (+{len(encoding) - 1} more)" if len(encoding) > 1 else ""
        return f"encoding {encoding[0]}{more}, {queued}"
    return f"{state}, {queued}"


class SystemdListener:
    """Mirrors the daemon's status into ``systemctl status`` and pings the watchdog.

    Status comes from the generation loop (every scan while idle, every second while
    generating) and once after each filed job from the encoder thread. So the pings stop
    when the loop is stuck (a hung CUDA call, a deadlock) and systemd restarts the daemon,
    which a ping from a timer thread of its own would never notice.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, min_interval: float = 1.0) -> None:
        self._clock = clock
        self._min_interval = min_interval
        self._last_text: str | None = None
        self._last_key: tuple[str, str | None, str | None] | None = None
        self._last_at = float("-inf")
        self._ping_every = watchdog_interval()
        self._pinged_at = float("-inf")
        self.enabled = _address() is not None
        # The loop thread and the encoder thread both publish status.
        self._lock = threading.Lock()

    def on_status(self, status: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self._lock:
                self._update(status)
        except Exception as e:  # a listener must never break the loop
            logs.get().warning("systemd status update failed", error=str(e))

    def _update(self, status: dict[str, Any]) -> None:
        now = self._clock()
        current = status.get("current") or {}
        encoding = status.get("encoding") or [None]
        key = (str(status.get("state")), current.get("job"), encoding[0])
        text = status_line(status)
        # Steps can come many times a second and each STATUS= wakes PID 1 (and sends a
        # D-Bus signal): throttle them, but let a change of state or job show at once.
        due = key != self._last_key or now - self._last_at >= self._min_interval
        if text != self._last_text and due and notify(f"STATUS={text}"):
            self._last_text, self._last_key, self._last_at = text, key, now
        # A quarter of WatchdogSec between pings: status updates are not evenly spaced.
        ping = self._ping_every is not None and now - self._pinged_at >= self._ping_every / 2
        if ping and watchdog():
            self._pinged_at = now

    def on_job_finished(self, event: JobFinished) -> None:
        """Nothing to do: the status that follows a finished job says it."""

    def close(self) -> None:
        """Nothing to flush; ``stopping()`` is the service's to send when the stop begins."""
