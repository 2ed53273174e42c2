"""``python -m daemon.cli``: the ``i2vd`` command."""

import os
import sys

from daemon.cli import main

if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
