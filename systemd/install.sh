#!/usr/bin/env bash
# Installs i2vd as a systemd service on this machine (see docs/service.md):
#   the i2vd user and group, the code in /opt/i2vd with its venv (scripts/setup.sh),
#   /etc/i2vd/config.toml from config.example.toml (kept if it exists), the hot folders,
#   the units i2vd.service and i2vd@.service, and starts i2vd.service.
# Run again to upgrade: the code and units are replaced, the config and folders are kept.
#
# Usage: sudo systemd/install.sh [--folders DIR] [--model ID] [--no-start]
#        systemd/install.sh --print-config [--folders DIR] [--model ID]   (no root needed)
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/i2vd
CONFIG_DIR=/etc/i2vd
UNIT_DIR=/etc/systemd/system
FOLDERS=/srv/i2vd
MODEL=ali-vilab/i2vgen-xl
START=1
PRINT_CONFIG=0

while [ $# -gt 0 ]; do
    case $1 in
        --folders) FOLDERS=${2:?--folders needs a directory}; shift 2 ;;
        --model) MODEL=${2:?--model needs a model id}; shift 2 ;;
        --no-start) START=0; shift ;;
        --print-config) PRINT_CONFIG=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $FOLDERS in
    /*) FOLDERS=${FOLDERS%/} ;;
    *) echo "install.sh: --folders must be an absolute path" >&2; exit 2 ;;
esac

# The example config with the folders, the model and the weights cache set for a service.
# Relative paths would resolve against /etc/i2vd, so they are made absolute here.
print_config() {
    local out
    out=$(sed \
        -e "s|^inbox = \"inbox\"|inbox = \"$FOLDERS/inbox\"|" \
        -e "s|^outputs = \"outputs\"|outputs = \"$FOLDERS/outputs\"|" \
        -e "s|^done = \"done\"|done = \"$FOLDERS/done\"|" \
        -e "s|^failed = \"failed\"|failed = \"$FOLDERS/failed\"|" \
        -e "s|^id = \"tiny\"|id = \"$MODEL\"|" \
        -e "s|^# cache_dir = \"/var/cache/i2vd\"|cache_dir = \"/var/cache/i2vd/models\"|" \
        "$SRC/config.example.toml")
    # A changed example must not silently give a config with relative folders under /etc.
    local line
    for line in "inbox = \"$FOLDERS/inbox\"" "outputs = \"$FOLDERS/outputs\"" "done = \"$FOLDERS/done\"" \
        "failed = \"$FOLDERS/failed\"" "id = \"$MODEL\"" 'cache_dir = "/var/cache/i2vd/models"'; do
        if ! grep -qxF "$line" <<<"$out"; then
            echo "install.sh: config.example.toml no longer has the line this script edits into: $line" >&2
            exit 1
        fi
    done
    printf '%s\n' "$out"
}

if [ "$PRINT_CONFIG" = 1 ]; then
    print_config
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo $0 $*)" >&2
    exit 1
fi
command -v systemctl >/dev/null || { echo "install.sh: systemctl not found; is this a systemd machine?" >&2; exit 1; }
# What we install must be readable by the service user whatever root's umask is.
umask 022

echo "== user and group i2vd"
getent group i2vd >/dev/null || groupadd --system i2vd
if ! getent passwd i2vd >/dev/null; then
    useradd --system --gid i2vd --home-dir /var/lib/i2vd --no-create-home \
        --shell /usr/sbin/nologin --comment "i2vd image-to-video daemon" i2vd
fi
# Some distributions give /dev/nvidia* to group video (or render) only.
for group in video render; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" i2vd; fi
done

echo "== code and venv in $PREFIX"
mkdir -p "$PREFIX"
if [ "$SRC" != "$PREFIX" ]; then
    # The code is owned by root: the service can read it but not change it.
    tar -C "$SRC" -cf - --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude=./.i2vd \
        --exclude=./inbox --exclude=./outputs --exclude=./done --exclude=./failed --exclude=./config.toml . \
        | tar -C "$PREFIX" -xf - --no-same-owner
fi
"$PREFIX/scripts/setup.sh"
"$PREFIX/.venv/bin/i2vd" --version

echo "== config $CONFIG_DIR/config.toml"
# Readable by the service's group only: webhook URLs can carry tokens.
install -d -m 0750 -o root -g i2vd "$CONFIG_DIR"
if [ -e "$CONFIG_DIR/config.toml" ]; then
    echo "kept the existing $CONFIG_DIR/config.toml (compare with $PREFIX/config.example.toml)"
else
    print_config >"$CONFIG_DIR/config.toml.new"
    chown root:i2vd "$CONFIG_DIR/config.toml.new"
    chmod 0640 "$CONFIG_DIR/config.toml.new"
    mv "$CONFIG_DIR/config.toml.new" "$CONFIG_DIR/config.toml"
fi

echo "== folders in $FOLDERS"
# setgid (2775): everything made inside belongs to group i2vd, the group of the share's users.
install -d -m 2775 -o i2vd -g i2vd "$FOLDERS"
for sub in inbox outputs done failed; do
    install -d -m 2775 -o i2vd -g i2vd "$FOLDERS/$sub"
done

echo "== GPU kernel modules"
# The unit may not load modules (ProtectKernelModules) nor run the setuid nvidia-modprobe
# (NoNewPrivileges): make sure nvidia-uvm and its device nodes exist at every boot.
if modinfo nvidia-uvm >/dev/null 2>&1; then
    echo nvidia-uvm >/etc/modules-load.d/i2vd-nvidia-uvm.conf
    modprobe nvidia-uvm || true
    if command -v nvidia-modprobe >/dev/null; then nvidia-modprobe -u -c=0 || true; fi
else
    echo "no nvidia-uvm kernel module: the daemon will run on the CPU (fine for model = \"tiny\")"
fi

echo "== systemd units"
install -m 0644 "$PREFIX/systemd/i2vd.service" "$PREFIX/systemd/i2vd@.service" "$UNIT_DIR/"
if [ "$FOLDERS" != /srv/i2vd ]; then
    # The units allow writes under /srv/i2vd only; a drop-in adds the chosen folder.
    for unit in i2vd.service i2vd@.service; do
        mkdir -p "$UNIT_DIR/$unit.d"
        printf '[Unit]\nRequiresMountsFor=%s\n\n[Service]\nReadWritePaths=%s\n' "$FOLDERS" "$FOLDERS" \
            >"$UNIT_DIR/$unit.d/folders.conf"
    done
fi
echo "== model weights (the service itself never downloads)"
install -d -m 0755 -o i2vd -g i2vd /var/cache/i2vd
# As the service user, so the cache is its own; a no-op when the weights are already there.
runuser -u i2vd -- "$PREFIX/.venv/bin/i2vd" fetch-model --config "$CONFIG_DIR/config.toml"

systemctl daemon-reload
systemctl enable i2vd.service
if [ "$START" = 1 ]; then
    # restart, not start: an upgrade must replace a daemon already running the old code.
    # This waits for READY=1, i.e. until the model is loaded and warmed up.
    systemctl restart i2vd.service
    systemctl --no-pager status i2vd.service || true
fi

cat <<EOF

Installed. Next:
  check the setup:   sudo -u i2vd $PREFIX/.venv/bin/i2vd check --config $CONFIG_DIR/config.toml
  follow the log:    journalctl -u i2vd -f
  see progress:      systemctl status i2vd   or   $PREFIX/.venv/bin/i2vd status --config $CONFIG_DIR/config.toml
  share the folders: docs/service.md, "Putting the folders on a share"
EOF
