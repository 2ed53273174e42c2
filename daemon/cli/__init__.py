"""The ``i2vd`` command line.

argparse (standard library) is enough for a handful of sub-commands, and its usage errors
already exit 2 as the contract asks; a CLI framework would add a dependency for nothing.

One module per group of commands (``run``, ``reports``, ``submit``, ``queue``, ``models``), the
parser and entry point in ``entry``, what they share in ``common``.
"""

from daemon.cli.entry import main

__all__ = ["main"]
