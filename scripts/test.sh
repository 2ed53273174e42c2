#!/usr/bin/env bash
# Sets up what the tests need and runs them (lint first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

# Real parts the tests drive, from Debian when we are allowed to install (CI runs as root);
# without them only the tests that need them skip, each saying why:
#   chromium        tests/listeners/test_page.py opens outputs/index.html headless
#   systemd         tests/e2e/test_systemd.py runs systemd-analyze verify on the units
#   samba smbclient tests/e2e/test_samba.py uploads through a private smbd on loopback
#   ffmpeg          the encode tests run against Debian's ffmpeg as well as the pinned one
#   debootstrap systemd-container
#                   tests/e2e/test_systemd_boot.py installs the service in a Debian booted by nspawn
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
{ command -v smbd >/dev/null || [ -x /usr/sbin/smbd ]; } || missing+=(samba)
command -v smbclient >/dev/null || missing+=(smbclient)
[ -x /usr/bin/ffmpeg ] || missing+=(ffmpeg)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${missing[@]}" >/dev/null; } \
            || echo "could not install ${missing[*]}: the tests that need them will be skipped" >&2
    else
        echo "not installed: ${missing[*]}: the tests that need them will be skipped" >&2
    fi
fi

export HF_HUB_OFFLINE=1
.venv/bin/ruff check daemon tests benchmarks
.venv/bin/ruff format --check daemon tests benchmarks
.venv/bin/python -m pytest "$@"
