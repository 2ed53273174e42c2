#!/usr/bin/env bash
# Sets up what the tests need and runs them (lint first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export HF_HUB_OFFLINE=1
.venv/bin/ruff check daemon tests benchmarks
.venv/bin/python -m pytest "$@"
