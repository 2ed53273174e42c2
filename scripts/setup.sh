#!/usr/bin/env bash
# Creates .venv and installs i2vd into it; sourced by run.sh and test.sh.
# Usage: scripts/setup.sh [EXTRAS]   (e.g. "test")
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian/Ubuntu ship venv separately; install it when we are allowed to.
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 -m venv failed: install your distribution's python3-venv package" >&2
            exit 1
        fi
        "$PY" -m venv .venv
    fi
fi

# torch first, pinned: here it is a CPU build from the local wheel cache; on a Linux GPU
# machine the same pin brings the CUDA build. A bare "torch" would pull a newer multi-GB one.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
extras=${1:-}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
