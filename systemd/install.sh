#!/usr/bin/env bash
# Installs i2vd as a systemd service on this machine (see docs/service.md):
#   the i2vd user and group, the share group (i2vd-share), the code in /opt/i2vd with its venv
#   (scripts/setup.sh), /etc/i2vd/config.toml from config.example.toml (kept if it exists), the
#   hot folders, the units i2vd.service and i2vd@.service, and starts i2vd.service.
# Run again to upgrade: the code and units are replaced, the config and folders are kept (their
# owners and modes are set to the layout of docs/security.md).
#
# Usage: sudo systemd/install.sh [--folders DIR] [--model ID] [--share-group NAME] [--no-start]
#        sudo systemd/install.sh --only-folders --folders DIR [--share-group NAME]
#             (the folders alone, for an i2vd@NAME instance; the service must be installed)
#        systemd/install.sh --print-config [--folders DIR] [--model ID]   (no root needed)
# The venv is made with $PYTHON (default: python3.11 on PATH), which must live outside
# /root, /home and /run/user; a pyenv or conda one there is replaced by the system's own.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/i2vd
CONFIG_DIR=/etc/i2vd
UNIT_DIR=/etc/systemd/system
FOLDERS=/srv/i2vd
MODEL=ali-vilab/i2vgen-xl
# The group of the people who use the shared folders; never the service's own group i2vd.
SHARE_GROUP=i2vd-share
START=1
PRINT_CONFIG=0
ONLY_FOLDERS=0

while [ $# -gt 0 ]; do
    case $1 in
        --folders) FOLDERS=${2:?--folders needs a directory}; shift 2 ;;
        --model) MODEL=${2:?--model needs a model id}; shift 2 ;;
        --share-group) SHARE_GROUP=${2:?--share-group needs a group name}; shift 2 ;;
        --no-start) START=0; shift ;;
        --print-config) PRINT_CONFIG=1; shift ;;
        --only-folders) ONLY_FOLDERS=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $FOLDERS in
    /*) FOLDERS=${FOLDERS%/} ;;
    *) echo "install.sh: --folders must be an absolute path" >&2; exit 2 ;;
esac
case $SHARE_GROUP in
    i2vd) echo "install.sh: --share-group must not be i2vd, the service's own group (docs/security.md)" >&2; exit 2 ;;
    [a-z_]*) ;;
    *) echo "install.sh: --share-group $SHARE_GROUP is not a group name" >&2; exit 2 ;;
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
# The folders, laid out as docs/security.md says (also those of an i2vd@NAME instance).
lay_out_folders() {
    echo "== folders in $FOLDERS"
    # The folder holding everything is the service's alone (0755, no setgid): the people on the
    # share can neither add to it nor rename the state folder or a shared folder away.
    install -d -m 0755 -o i2vd -g i2vd "$FOLDERS"
    # install and chmod keep a folder's setgid bit unless told: an older layout had it here.
    chmod 0755 "$FOLDERS" && chmod g-s "$FOLDERS"
    # The four shared folders: group-writable for the share group, setgid (2775) so that whatever
    # is made inside, by a user or by the daemon, belongs to that group.
    for sub in inbox outputs done failed; do
        dir=$FOLDERS/$sub
        if [ -d "$dir" ] && [ ! -L "$dir" ] && [ "$(stat -c %G "$dir")" != "$SHARE_GROUP" ]; then
            # An older install shared group i2vd: hand what is inside to the share group. -P -h:
            # never through a symbolic link a user planted (that would change a file elsewhere).
            echo "moving $dir and its contents to group $SHARE_GROUP"
            chgrp -R -P -h "$SHARE_GROUP" "$dir"
        fi
        install -d -m 2775 -o i2vd -g "$SHARE_GROUP" "$dir"
    done
    # The state folder (claims, temporary files, status, webhook deliveries): the daemon's only
    # (no permission for group or others; the daemon refuses to start when someone else can write
    # it). Its group is the share group and it is setgid: a job folder made here and renamed onto
    # the share then belongs to the share group, like everything else there, so people can move
    # and delete their results and drag a failed job back. Set here, as root: the unit may not set
    # a setgid bit itself (RestrictSUIDSGID), only inherit it.
    install -d -m 2700 -o i2vd -g "$SHARE_GROUP" "$FOLDERS/.i2vd"
    chown i2vd:"$SHARE_GROUP" "$FOLDERS/.i2vd" && chmod 2700 "$FOLDERS/.i2vd"
}

if [ "$ONLY_FOLDERS" = 1 ]; then
    # Another set of folders (an i2vd@NAME instance) beside an installed service.
    getent passwd i2vd >/dev/null || { echo "install.sh: no user i2vd: run install.sh without --only-folders first" >&2; exit 1; }
    getent group "$SHARE_GROUP" >/dev/null || groupadd --system "$SHARE_GROUP"
    usermod -a -G "$SHARE_GROUP" i2vd
    lay_out_folders
    exit 0
fi
command -v systemctl >/dev/null || { echo "install.sh: systemctl not found; is this a systemd machine?" >&2; exit 1; }

# The interpreter, chosen before anything changes. The unit hides /root, /home and /run/user
# (ProtectHome=yes) and the i2vd user may not enter them anyway, so a venv made from a pyenv or
# conda Python there leaves a service that cannot even exec its interpreter.
python_paths() {
    # Where the interpreter really is: its binary and its standard library (a venv's base).
    "$1" -c 'import os, sys; assert sys.version_info >= (3, 11)
print(os.path.realpath(sys.executable)); print(os.path.realpath(sys.base_prefix))' 2>/dev/null
}
hidden_from_service() {
    local path
    while read -r path; do
        case $path in /root | /root/* | /home | /home/* | /run/user | /run/user/*) return 0 ;; esac
    done <<<"$1"
    return 1
}
pick_python() {
    local asked=${PYTHON:-python3.11} found paths candidate
    found=$(command -v "$asked" || true)
    if [ -n "$found" ] && paths=$(python_paths "$found") && ! hidden_from_service "$paths"; then
        echo "$found"
        return
    fi
    if [ -z "${PYTHON:-}" ]; then
        for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11 /usr/bin/python3 /usr/local/bin/python3; do
            if [ -x "$candidate" ] && paths=$(python_paths "$candidate") && ! hidden_from_service "$paths"; then
                [ -n "$found" ] && echo "install.sh: $found is not usable by the service (in a home folder, or older than 3.11); using $candidate" >&2
                echo "$candidate"
                return
            fi
        done
    fi
    echo "install.sh: no Python 3.11+ outside /root, /home and /run/user${found:+ ($found is in one, or too old)}, which the service cannot see (ProtectHome=yes): install one (apt-get install python3 python3-venv) or run again with PYTHON=/path/to/python3.11 outside them" >&2
    exit 1
}
PY=$(pick_python)
# What we install must be readable by the service user whatever root's umask is.
umask 022

echo "== user and group i2vd, share group $SHARE_GROUP"
getent group i2vd >/dev/null || groupadd --system i2vd
if ! getent passwd i2vd >/dev/null; then
    useradd --system --gid i2vd --home-dir /var/lib/i2vd --no-create-home \
        --shell /usr/sbin/nologin --comment "i2vd image-to-video daemon" i2vd
fi
# The people on the share are in this group, the daemon too (as a supplementary group): it
# opens the four shared folders to them and nothing else.
getent group "$SHARE_GROUP" >/dev/null || groupadd --system "$SHARE_GROUP"
usermod -a -G "$SHARE_GROUP" i2vd
# Anyone else in group i2vd can read the config and its secrets: say so (an older install
# put the share's users there).
others=$(getent group i2vd | cut -d: -f4 | tr ',' '\n' | grep -vx i2vd | paste -sd, || true)
if [ -n "$others" ]; then
    echo "install.sh: warning: group i2vd has other members ($others): they can read the config and its secrets;" \
        "move them to $SHARE_GROUP (gpasswd -d NAME i2vd; usermod -aG $SHARE_GROUP NAME)" >&2
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
# A venv made from another interpreter (say from a pyenv one by an older install.sh) is remade.
if [ -x "$PREFIX/.venv/bin/python" ] \
    && [ "$(python_paths "$PREFIX/.venv/bin/python" | tail -n 1)" != "$(python_paths "$PY" | tail -n 1)" ]; then
    echo "the venv in $PREFIX was made from another Python: making it again with $PY"
    rm -rf "$PREFIX/.venv"
fi
PYTHON=$PY "$PREFIX/scripts/setup.sh"
"$PREFIX/.venv/bin/i2vd" --version

echo "== config $CONFIG_DIR/config.toml"
# Readable by the service's group only: webhook URLs can carry tokens.
install -d -m 0750 -o root -g i2vd "$CONFIG_DIR"
if [ -e "$CONFIG_DIR/config.toml" ]; then
    echo "kept the existing $CONFIG_DIR/config.toml (compare with $PREFIX/config.example.toml)"
    # The daemon refuses a config anyone but root can change; only the service may read it.
    chown root:i2vd "$CONFIG_DIR/config.toml"
    chmod 0640 "$CONFIG_DIR/config.toml"
else
    print_config >"$CONFIG_DIR/config.toml.new"
    chown root:i2vd "$CONFIG_DIR/config.toml.new"
    chmod 0640 "$CONFIG_DIR/config.toml.new"
    mv "$CONFIG_DIR/config.toml.new" "$CONFIG_DIR/config.toml"
fi

lay_out_folders

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
for unit in i2vd.service i2vd@.service; do
    if [ "$SHARE_GROUP" != i2vd-share ]; then
        # The units name the default share group; a drop-in names this one instead.
        mkdir -p "$UNIT_DIR/$unit.d"
        printf '[Service]\nSupplementaryGroups=\nSupplementaryGroups=%s\n' "$SHARE_GROUP" \
            >"$UNIT_DIR/$unit.d/share-group.conf"
    else
        rm -f "$UNIT_DIR/$unit.d/share-group.conf"
    fi
done
echo "== model weights (the service itself never downloads)"
# The weights and the Hugging Face folder (which may hold a token): the service's only.
install -d -m 0750 -o i2vd -g i2vd /var/cache/i2vd
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
  let someone use them: sudo usermod -aG $SHARE_GROUP NAME   (never group i2vd; docs/security.md)
  share the folders: docs/service.md, "Putting the folders on a share"
EOF
