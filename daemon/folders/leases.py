"""Whether someone still has a file open for writing, asked of the kernel by a read lease.

On a local filesystem (where Samba or the NFS server writes) one more check applies,
made by the claim just before it takes a ready group: no process may hold one of its
files open for writing. The kernel answers that exactly (a read lease is refused while
a writer has the file open), so an upload that stalls for longer than the settle time
while smbd still holds the file is not taken half-written. A writer that keeps a file
open without changing it for ``busy_limit`` is assumed dead, and the file is taken anyway.
On network mounts (the daemon is an SMB or NFS *client*) the kernel cannot know about
writers on other machines, and settling alone decides.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from pathlib import Path


class LeasesUnsupported(Exception):
    """The kernel will not give leases here (not our file and no CAP_LEASE, or a filesystem without)."""


def open_for_writing(path: Path) -> bool | None:
    """Whether another process has ``path`` open for writing; None when this file cannot be opened.

    A read lease is granted only while no one has the file open for writing, and is dropped
    at once by closing. Raises LeasesUnsupported when leases cannot be had at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError:
        return None  # gone, or unreadable: the job itself will say so
    try:
        # Were a writer to open the file in the microseconds we hold the lease, the kernel
        # would signal us: SIGIO by default, which kills the process. SIGURG is ignored.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        raise LeasesUnsupported(e.strerror) from None
    finally:
        os.close(fd)  # closing drops the lease
    return False
