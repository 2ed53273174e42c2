#!/usr/bin/env bash
# Sets everything up and starts the daemon watching ./inbox (built-in `tiny` model unless
# config.toml says otherwise). Ctrl-C once stops after the current job, twice at once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f config.toml ] || cp config.example.toml config.toml
exec .venv/bin/i2vd run --config config.toml "$@"
