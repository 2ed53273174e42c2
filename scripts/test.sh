#!/usr/bin/env bash
# Sets up what the tests need and runs them (lint first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# tests/test_page.py opens outputs/index.html in a real headless Chromium; install Debian's
# when we are allowed to (CI runs as root), otherwise that one test skips itself.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "chromium could not be installed: the share page browser test will be skipped" >&2
fi
# tests/test_systemd.py checks the units with systemd-analyze verify; install Debian's systemd
# (which ships it) when we are allowed to, otherwise those tests skip themselves.
if ! command -v systemd-analyze >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd \
        >/dev/null; } || echo "systemd could not be installed: the unit file checks will be skipped" >&2
fi
# tests/test_samba.py uploads through a private smbd with smbclient; install Debian's samba and
# smbclient when we are allowed to, otherwise those tests skip themselves.
if ! command -v smbd >/dev/null && [ ! -x /usr/sbin/smbd ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        samba smbclient >/dev/null; } || echo "samba could not be installed: the Samba tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check daemon tests benchmarks
.venv/bin/python -m pytest "$@"
