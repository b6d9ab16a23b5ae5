#!/usr/bin/env bash
# Installs, upgrades or removes the POS Edge Agent on a Debian 12 / Ubuntu 24.04 / Raspberry Pi OS box.
#
#   sudo systemd/install.sh                       install or upgrade from this checkout, enable and start
#   sudo systemd/install.sh --kiosk               the same, plus the customer screen on tty1 (cage + Chromium)
#   sudo systemd/install.sh --source FILE.whl     install that wheel instead of this checkout
#   sudo systemd/install.sh --root DIR            into a staging root (an image build): no apt, no systemctl
#   sudo systemd/install.sh --uninstall [--purge] remove the program and units; --purge also settings and data
#
# Run it again at any time: it only does what is missing. Layout:
#   /opt/pos-edge/releases/<version>-<hash>/  one virtual environment per release (root's, read-only to the agent)
#   /opt/pos-edge/current                     the running release, switched only after a release installed and
#                                             migrated the database
#   /etc/pos-edge/agent.toml                  settings (0640 root:pos-edge), from config/example.toml when missing
#   /etc/pos-edge/secrets.env                 tokens (0600 root:root), an API token generated when missing
#   /var/lib/pos-edge/                        the database and backups/ (0700 pos-edge)
#   /etc/systemd/system/pos-edge{,-kiosk}.service, /etc/modules-load.d/pos-edge.conf,
#   /etc/udev/rules.d/70-pos-edge.rules (a template, never overwritten), /usr/local/bin/pos-edge
#   --extras hid adds python-evdev for keyboard-wedge scanners (added by itself when the settings name hid://).
#
# An upgrade stops the agent, backs the database up, migrates it with the new release, then switches `current`
# and starts the agent. If the migration fails, the backup is put back, `current` stays on the old release, the
# old release is started again and the script exits 1.
#
# For offline image builds and tests (the defaults are the real thing):
#   POS_EDGE_PYTHON    the interpreter the virtual environments are made with (default /usr/bin/python3)
#   POS_EDGE_PIP_ARGS  extra arguments to pip, e.g. "--no-index --find-links /srv/wheels"
set -euo pipefail
umask 022

PREFIX=/opt/pos-edge
CONF_DIR=/etc/pos-edge
STATE_DIR=/var/lib/pos-edge
UNIT_DIR=/etc/systemd/system
UDEV_RULES=/etc/udev/rules.d/70-pos-edge.rules
MODULES_CONF=/etc/modules-load.d/pos-edge.conf
COMMAND_LINK=/usr/local/bin/pos-edge
AGENT_USER=pos-edge
KIOSK_USER=pos-kiosk
DEVICE_GROUPS=(dialout lp video input)
KEEP_RELEASES=3
APT_PACKAGES=(python3-venv fonts-wqy-microhei libusb-1.0-0)
KIOSK_APT_PACKAGES=(cage chromium)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${POS_EDGE_PYTHON:-/usr/bin/python3}
read -r -a PIP_ARGS <<<"${POS_EDGE_PIP_ARGS:-}"

ROOT=""
SOURCE=""
KIOSK=0
EXTRAS=""
ACTION=install
PURGE=0
WORK=""

say() { printf 'pos-edge install: %s\n' "$*"; }
die() {
    printf 'pos-edge install: error: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --source) SOURCE=${2:?--source needs a directory or a wheel}; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --kiosk) KIOSK=1; shift ;;
        --extras) EXTRAS=${2:?--extras needs a list, e.g. hid}; shift 2 ;;
        --extras=*) EXTRAS=${1#*=}; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'pos-edge install: unknown argument: %s\n' "$1" >&2; usage 2 ;;
    esac
done
if ((PURGE)) && [[ $ACTION != uninstall ]]; then
    die "--purge goes with --uninstall"
fi
[[ $(id -u) == 0 ]] || die "run as root (sudo $0 ...): it creates users and writes to /etc, /opt and /var/lib"
if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "--root $ROOT is not a directory"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT != / ]] || ROOT=""
fi
[[ -z $EXTRAS || $EXTRAS =~ ^[a-z0-9_,-]+$ ]] || die "--extras takes names like hid or hid,zbar"
# Never run from a directory the agent's user could not enter (runuser keeps the working directory).
cd /

# A path on the box being installed: under --root, inside the staging root.
r() { printf '%s%s' "$ROOT" "$1"; }
live() { [[ -z $ROOT ]]; }

cleanup() {
    if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- users and groups ---------------------------------------------------------------------------------------
# Under --root the account files of the staging root are edited (useradd --prefix), never the host's.
account_tool() {
    local tool=$1
    shift
    if live; then "$tool" "$@"; else "$tool" --prefix "$ROOT" "$@"; fi
}

has_group() {
    if live; then getent group "$1" >/dev/null; else grep -q "^$1:" "$(r /etc/group)"; fi
}

has_user() {
    if live; then getent passwd "$1" >/dev/null; else grep -q "^$1:" "$(r /etc/passwd)"; fi
}

# uid and gid by name, from the box's own account files.
id_of() {
    local file=$1 name=$2 found
    if live; then
        found=$(getent "$file" "$name" | cut -d: -f3)
    else
        found=$(awk -F: -v n="$name" '$1 == n { print $3 }' "$(r "/etc/$file")")
    fi
    [[ -n $found ]] || die "no $file entry for $name"
    printf '%s' "$found"
}

ensure_user() {
    local user=$1 home=$2 groups=$3 group
    local wanted=()
    IFS=, read -r -a wanted <<<"$groups"
    local present=()
    for group in "${wanted[@]}"; do
        if [[ $user == "$AGENT_USER" ]] && ! has_group "$group"; then
            # systemd and udev make these on a normal install; a minimal image may lack one.
            account_tool groupadd --system "$group"
            say "created group $group"
        fi
        if has_group "$group"; then present+=("$group"); fi
    done
    local list
    list=$(IFS=,; printf '%s' "${present[*]}")
    if ! has_user "$user"; then
        account_tool useradd --system --user-group --home-dir "$home" --no-create-home \
            --shell /usr/sbin/nologin --comment "POS Edge ${user#pos-}" ${list:+--groups "$list"} "$user"
        say "created system user $user${list:+ (groups $list)}"
    elif [[ -n $list ]]; then
        account_tool usermod --append --groups "$list" "$user"
    fi
}

# --- packages -----------------------------------------------------------------------------------------------
install_packages() {
    local wanted=("${APT_PACKAGES[@]}") missing=() package
    if ((KIOSK)); then wanted+=("${KIOSK_APT_PACKAGES[@]}"); fi
    # evdev (the hid extra) is compiled on the box.
    if [[ ,$EXTRAS, == *,hid,* ]]; then wanted+=(gcc python3-dev); fi
    for package in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# --- the release ----------------------------------------------------------------------------------------------
# The wheel to install: --source FILE.whl as it is, or built from a source tree (this checkout by default).
wheel_from_source() {
    local source=${SOURCE:-$HERE/..}
    if [[ -f $source && $source == *.whl ]]; then
        printf '%s' "$(cd "$(dirname "$source")" && pwd)/$(basename "$source")"
        return
    fi
    [[ -f $source/pyproject.toml ]] || die "--source $source is neither a wheel nor a source tree with pyproject.toml"
    say "building the wheel from $(cd "$source" && pwd)" >&2
    "$PYTHON" -m venv "$WORK/build" >&2
    "$WORK/build/bin/python" -m pip wheel --quiet --no-deps "${PIP_ARGS[@]}" -w "$WORK/wheel" "$source" >&2 \
        || die "could not build a wheel from $source"
    local wheel
    wheel=$(find "$WORK/wheel" -name 'pos_edge_agent-*.whl' | head -n 1)
    [[ -n $wheel ]] || die "building $source made no pos_edge_agent wheel"
    printf '%s' "$wheel"
}

# <version>-<hash of the wheel's RECORD and the extras>: the RECORD lists every file's hash, so one source gives
# one release however often its wheel is rebuilt, and a changed file (or another extra) gives a new one.
release_id() {
    "$PYTHON" - "$1" "$EXTRAS" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    extras = ",".join(sorted(filter(None, sys.argv[2].split(","))))
    digest = hashlib.sha256(wheel.read(record) + (f"\nextras={extras}".encode() if extras else b"")).hexdigest()[:12]
    version = record.split("/")[0].removesuffix(".dist-info").split("-", 1)[1]
print(f"{version}-{digest}")
EOF
}

# A virtual environment under releases/, finished with a .complete marker (a half-made one is made again).
build_release() {
    local wheel=$1 id=$2
    local release=$PREFIX/releases/$id
    local target
    target=$(r "$release")
    if [[ -f $target/.complete ]]; then
        say "release $id is already installed"
        return
    fi
    rm -rf "$target"
    mkdir -p "$(dirname "$target")"
    say "installing release $id into $release"
    "$PYTHON" -m venv "$target"
    local requirement=$wheel
    if [[ -n $EXTRAS ]]; then requirement="pos-edge-agent[$EXTRAS] @ file://$wheel"; fi
    if ! "$target/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_ARGS[@]}" "$requirement"; then
        rm -rf "$target"
        die "pip could not install $wheel (see above); nothing was changed"
    fi
    install -d -m 0755 "$target/libexec"
    install -m 0755 "$HERE/pos-edge-kiosk-page" "$target/libexec/pos-edge-kiosk-page"
    if [[ -n $ROOT ]]; then
        # Made at $ROOT/opt/..., run at /opt/...: the scripts' #! lines and activate name the final place.
        { grep -rlF -- "$target" "$target/bin" || true; } | while read -r file; do
            sed -i "s|$target|$release|g" "$file"
        done
    fi
    # Byte code is compiled now, by root; the agent's user can write nothing here.
    chown -R root:root "$target"
    chmod -R go-w "$target"
    touch "$target/.complete"
}

current_release() {
    local link
    link=$(r "$PREFIX/current")
    if [[ -L $link ]]; then basename "$(readlink "$link")"; fi
}

switch_current() {
    local id=$1
    ln -sfn "releases/$id" "$(r "$PREFIX/current.new")"
    mv -T "$(r "$PREFIX/current.new")" "$(r "$PREFIX/current")"
    say "current release: $id"
}

prune_releases() {
    local current=$1 previous=$2 release
    # Newest first, by when they were made; the current and previous ones always stay.
    find "$(r "$PREFIX/releases")" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %f\n' | sort -rn | cut -d' ' -f2- \
        | tail -n +$((KEEP_RELEASES + 1)) | while read -r release; do
            if [[ $release != "$current" && $release != "$previous" ]]; then
                rm -rf "$(r "$PREFIX/releases/$release")"
                say "removed old release $release"
            fi
        done
}

# --- the agent's commands, as the agent's user ---------------------------------------------------------------
# Files the agent must keep writing (the database, its -wal, backups) are made by its own user. Under --root
# there is no such user on this host: the command runs as root and the files are handed over afterwards.
as_agent() {
    if live; then runuser -u "$AGENT_USER" -- "$@"; else "$@"; fi
}

agent_command() {
    local release=$1
    shift
    local env=()
    # Under --root the settings name the box's paths (/var/lib/pos-edge/agent.db): point them into the root.
    if ! live; then env=(env "POS_EDGE_STORAGE__DATABASE=$(r "$STATE_DIR/agent.db")"); fi
    as_agent "${env[@]}" "$(r "$PREFIX/releases/$release")/bin/python" -m agent "$@" --config "$(r "$CONF_DIR/agent.toml")"
}

hand_over_state() {
    if live; then return; fi
    chown -R "$(id_of passwd "$AGENT_USER"):$(id_of group "$AGENT_USER")" "$(r "$STATE_DIR")"
}

# The database as it is now, to $1: the old release's own `pos-edge backup --to` (which verifies the copy) when
# it has one, otherwise SQLite's online backup API and an integrity check.
backup_database() {
    local old=$1 target=$2
    if agent_command "$old" backup --help 2>/dev/null | grep -q -- '--to'; then
        agent_command "$old" backup --to "$target" >/dev/null
    else
        as_agent "$PYTHON" - "$(r "$STATE_DIR/agent.db")" "$target" <<'EOF'
import os, sqlite3, sys
source, target = sys.argv[1], sys.argv[2]
partial = target + ".partial"
with sqlite3.connect(source) as db, sqlite3.connect(partial) as copy:
    db.backup(copy)
    check = copy.execute("PRAGMA integrity_check").fetchone()[0]
if check != "ok":
    os.unlink(partial)
    sys.exit(f"the backup of {source} does not check out: {check}")
with open(partial, "rb") as f:
    os.fsync(f.fileno())
os.replace(partial, target)
EOF
    fi
    hand_over_state
}

# Puts the backup back as the database; the database as the failed migration left it is kept aside.
restore_database() {
    local backup=$1 aside=$2
    local database
    database=$(r "$STATE_DIR/agent.db")
    as_agent "$PYTHON" - "$database" "$backup" "$aside" <<'EOF'
import os, shutil, sys
database, backup, aside = sys.argv[1:4]
restoring = database + ".restoring"
shutil.copyfile(backup, restoring)
with open(restoring, "rb") as f:
    os.fsync(f.fileno())
os.replace(database, aside)
# The write-ahead log belongs to the file set aside: left in place it would be replayed onto the backup.
for suffix in ("-wal", "-shm"):
    if os.path.exists(database + suffix):
        os.replace(database + suffix, aside + suffix)
os.replace(restoring, database)
EOF
    hand_over_state
}

systemctl_live() {
    if live; then systemctl "$@"; fi
}

# --- install / upgrade ----------------------------------------------------------------------------------------
install_settings() {
    local gid
    gid=$(id_of group "$AGENT_USER")
    install -d -m 0750 -o root -g "$gid" "$(r "$CONF_DIR")"
    local settings
    settings=$(r "$CONF_DIR/agent.toml")
    if [[ ! -e $settings ]]; then
        [[ -f $HERE/../config/example.toml ]] || die "no $CONF_DIR/agent.toml and no config/example.toml next to this script to start it from"
        install -m 0640 -o root -g "$gid" "$HERE/../config/example.toml" "$settings"
        say "wrote $CONF_DIR/agent.toml from config/example.toml: edit the store, station, central and devices"
    fi
    # Kept as the store wrote them, but never readable by others.
    chown root:"$gid" "$settings"
    chmod 0640 "$settings"

    local secrets
    secrets=$(r "$CONF_DIR/secrets.env")
    if [[ ! -e $secrets ]]; then
        local token
        token=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
        (
            umask 077
            cat >"$secrets" <<EOF
# Secrets of the POS Edge Agent, read by systemd (EnvironmentFile=) before it starts the agent. Root only.
# The store's bearer token at central (from \`pos-central store add\`):
#POS_EDGE_CENTRAL__TOKEN=
# The local API's token for the POS software and the screens (generated; the kiosk screen reads it from here):
POS_EDGE_API__TOKEN=$token
# The phone number hash key, the same as central's (at least 16 characters):
#POS_EDGE_PRIVACY__PHONE_HASH_KEY=
EOF
        )
        say "wrote $CONF_DIR/secrets.env with a new API token: add the central token and the phone hash key"
    fi
    chown root:root "$secrets"
    chmod 0600 "$secrets"
}

install_state() {
    local uid gid
    uid=$(id_of passwd "$AGENT_USER")
    gid=$(id_of group "$AGENT_USER")
    install -d -m 0700 -o "$uid" -g "$gid" "$(r "$STATE_DIR")" "$(r "$STATE_DIR/backups")"
}

install_system_files() {
    install -d -m 0755 "$(r "$UNIT_DIR")" "$(dirname "$(r "$MODULES_CONF")")" "$(dirname "$(r "$UDEV_RULES")")"
    install -m 0644 "$HERE/pos-edge.service" "$(r "$UNIT_DIR/pos-edge.service")"
    if ((KIOSK)); then
        install -m 0644 "$HERE/pos-edge-kiosk.service" "$(r "$UNIT_DIR/pos-edge-kiosk.service")"
    fi
    install -m 0644 "$HERE/modules-load.d/pos-edge.conf" "$(r "$MODULES_CONF")"
    # `pos-edge doctor`, `pos-edge devices` and the rest on the PATH, always the current release's.
    install -d -m 0755 "$(r "$(dirname "$COMMAND_LINK")")"
    ln -sfn "$PREFIX/current/bin/pos-edge" "$(r "$COMMAND_LINK")"
    # The store fills the rules in: installed once, never overwritten.
    if [[ ! -e $(r "$UDEV_RULES") ]]; then
        install -m 0644 "$HERE/udev/70-pos-edge.rules" "$(r "$UDEV_RULES")"
    fi
    if live; then
        systemctl daemon-reload
        if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
        # The USB-serial and usblp modules now, not only from the next boot on (a module this kernel lacks
        # is only a warning: it may be built in).
        local module
        if command -v modprobe >/dev/null; then
            { grep -v '^#' "$HERE/modules-load.d/pos-edge.conf" || true; } | while read -r module; do
                [[ -z $module ]] || modprobe -q "$module" || say "warning: kernel module $module did not load"
            done
        fi
    fi
}

# Enables the units; under --root the symlinks systemctl would make are made by hand.
enable_units() {
    local units=(pos-edge.service)
    if ((KIOSK)); then units+=(pos-edge-kiosk.service); fi
    if live; then
        systemctl enable --quiet "${units[@]}"
        if ((KIOSK)); then systemctl disable --quiet getty@tty1.service 2>/dev/null || true; fi
    else
        local unit
        install -d -m 0755 "$(r "$UNIT_DIR/multi-user.target.wants")"
        for unit in "${units[@]}"; do
            ln -sfn "$UNIT_DIR/$unit" "$(r "$UNIT_DIR/multi-user.target.wants/$unit")"
        done
    fi
}

do_install() {
    # A box that has the kiosk screen keeps it up to date without being told again.
    if [[ -e $(r "$UNIT_DIR/pos-edge-kiosk.service") ]]; then KIOSK=1; fi
    if live; then install_packages; fi
    [[ -x $PYTHON ]] || die "no Python at $PYTHON (apt-get install python3-venv, or set POS_EDGE_PYTHON)"
    WORK=$(mktemp -d)
    chmod 0755 "$WORK"

    ensure_user "$AGENT_USER" "$STATE_DIR" "$(IFS=,; printf '%s' "${DEVICE_GROUPS[*]}")"
    if ((KIOSK)); then ensure_user "$KIOSK_USER" /nonexistent video,input,render; fi
    install -d -m 0755 "$(r "$PREFIX")" "$(r "$PREFIX/releases")"
    install_settings
    install_state
    # A keyboard-wedge scanner in the settings needs python-evdev (the hid extra), compiled on the box.
    if grep -q '^[^#]*"hid://' "$(r "$CONF_DIR/agent.toml")" && [[ ,$EXTRAS, != *,hid,* ]]; then
        EXTRAS=${EXTRAS:+$EXTRAS,}hid
        say "the settings name a hid:// scanner: installing the hid extra (python-evdev) too"
        if live; then install_packages; fi
    fi

    local wheel id old
    wheel=$(wheel_from_source)
    id=$(release_id "$wheel")
    old=$(current_release)
    build_release "$wheel" "$id"

    if [[ -z $old ]]; then
        switch_current "$id"
    elif [[ $old != "$id" ]]; then
        upgrade "$old" "$id"
    else
        say "release $id is current"
    fi
    # Units and rules of the new release only once it is current: a failed upgrade leaves the old ones.
    install_system_files
    prune_releases "$id" "$old"
    enable_units
    if live; then
        systemctl start pos-edge.service
        if ((KIOSK)); then systemctl start pos-edge-kiosk.service; fi
        say "pos-edge is $(systemctl is-active pos-edge.service); check it with: pos-edge doctor"
    fi
    say "done"
}

upgrade() {
    local old=$1 new=$2
    local database
    database=$(r "$STATE_DIR/agent.db")
    say "upgrading $old -> $new"
    if live; then
        systemctl stop pos-edge.service || die "could not stop pos-edge.service; nothing was changed"
    fi
    if [[ ! -e $database ]]; then
        switch_current "$new"
        return
    fi
    local stamp backup
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    backup=$(r "$STATE_DIR/backups/pre-upgrade-$old-$stamp.db")
    if ! backup_database "$old" "$backup"; then
        systemctl_live start pos-edge.service
        die "could not back the database up before the upgrade; nothing was changed and $old is running again"
    fi
    say "database backed up to ${backup#"$ROOT"}"
    local output
    if output=$(agent_command "$new" db migrate 2>&1); then
        printf '%s\n' "$output"
        hand_over_state
        switch_current "$new"
        return
    fi
    printf '%s\n' "$output" >&2
    local aside
    aside=$(r "$STATE_DIR/agent.db.failed-upgrade-$stamp")
    restore_database "$backup" "$aside"
    systemctl_live start pos-edge.service
    die "upgrade to $new failed while migrating the database (above). The database was restored from ${backup#"$ROOT"} (the one the migration left is ${aside#"$ROOT"}); $old is still the current release$(live && printf ' and running again')."
}

# --- uninstall ----------------------------------------------------------------------------------------------
do_uninstall() {
    local unit
    for unit in pos-edge-kiosk.service pos-edge.service; do
        if live && [[ -e $UNIT_DIR/$unit ]]; then
            systemctl disable --now --quiet "$unit" || true
            # The login prompt gets tty1 back.
            if [[ $unit == pos-edge-kiosk.service ]]; then systemctl enable --quiet getty@tty1.service || true; fi
        fi
        rm -f "$(r "$UNIT_DIR/$unit")" "$(r "$UNIT_DIR/multi-user.target.wants/$unit")"
    done
    rm -f "$(r "$MODULES_CONF")" "$(r "$COMMAND_LINK")"
    # The rules as shipped go; rules the store filled in are its settings and stay unless --purge.
    local rules
    rules=$(r "$UDEV_RULES")
    if [[ -e $rules ]]; then
        if ((PURGE)) || cmp -s "$rules" "$HERE/udev/70-pos-edge.rules"; then
            rm -f "$rules"
        else
            say "kept ${UDEV_RULES} (filled in by the store; --purge removes it)"
        fi
    fi
    rm -rf "$(r "$PREFIX")"
    if live; then
        systemctl daemon-reload
        if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
    fi
    if ((PURGE)); then
        rm -rf "$(r "$CONF_DIR")" "$(r "$STATE_DIR")"
        local user
        for user in "$KIOSK_USER" "$AGENT_USER"; do
            if has_user "$user"; then account_tool userdel "$user"; fi
            if has_group "$user"; then account_tool groupdel "$user"; fi
        done
        say "removed the program, settings, data and users"
    else
        say "removed the program and units; settings in $CONF_DIR and data in $STATE_DIR are kept (--purge removes them)"
    fi
}

# One installer at a time.
install -d -m 0755 "$(r /run/lock)"
exec 9>"$(r /run/lock/pos-edge-install.lock)"
flock -n 9 || die "another pos-edge install is running"

if [[ $ACTION == uninstall ]]; then do_uninstall; else do_install; fi
