#!/usr/bin/env bash
# Install skiff on this machine: binaries, config, manifest directory and systemd unit.
#
# Usage: sudo scripts/install.sh [--prefix DIR] [--no-build]
#   --prefix DIR   install skiffd, skiff, skiff-shim and the CNI plugins to DIR/bin (default /usr/local)
#   --no-build     install the binaries already in target/release
#
# Installs:
#   PREFIX/bin/{skiffd,skiff,skiff-shim,skiff-shim-mon,skiff-bridge,skiff-host-local,skiff-portmap}
#   /etc/skiff/manifests/             (pod manifests; left as is if present)
#   /etc/skiff/skiffd.yaml            (from scripts/skiff.yaml, only if absent)
#   /etc/systemd/system/skiffd.service
# It does not start skiffd; it prints the command that does. Running it again upgrades the
# binaries: restarting skiffd then keeps the running containers (the unit has KillMode=process).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { echo "install: $*" >&2; exit 1; }

prefix=/usr/local
build=1
while (($#)); do
    case $1 in
        --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
prefix=${prefix%/}
[[ $prefix == /* ]] || die "--prefix must be an absolute path, got $prefix"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
((EUID == 0)) || die "run as root: sudo $0"

if ((build)); then
    # shellcheck source=scripts/install-deps.sh
    source scripts/install-deps.sh
    install_deps
    find_cargo
    echo "install: cargo build --release --workspace --bins"
    cargo build --release --workspace --bins
    fix_ownership target ${CARGO_HOME:+"$CARGO_HOME"}
fi

bindir=$prefix/bin
for b in skiffd skiff skiff-shim skiff-shim-mon skiff-bridge skiff-host-local skiff-portmap; do
    [[ -x target/release/$b ]] || die "target/release/$b missing (build with cargo build --release --workspace --bins)"
done
install -d -m 0755 "$bindir"
for b in skiffd skiff skiff-shim skiff-shim-mon skiff-bridge skiff-host-local skiff-portmap; do
    # install(1) writes a new file and renames it: a running skiffd or shim keeps its old binary.
    install -m 0755 "target/release/$b" "$bindir/$b"
    echo "install: $bindir/$b"
done

install -d -m 0755 /etc/skiff /etc/skiff/manifests
echo "install: /etc/skiff/manifests/"
if [[ -e /etc/skiff/skiffd.yaml ]]; then
    echo "install: /etc/skiff/skiffd.yaml exists, left as is (example: scripts/skiff.yaml)"
else
    install -m 0644 scripts/skiff.yaml /etc/skiff/skiffd.yaml
    echo "install: /etc/skiff/skiffd.yaml"
fi

unit=/etc/systemd/system/skiffd.service
install -d -m 0755 /etc/systemd/system
sed "s|/usr/local/bin/skiffd|$bindir/skiffd|g" scripts/skiffd.service >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv -f "$unit.tmp" "$unit"
echo "install: $unit"

echo
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "Start skiffd now and at every boot with:"
    echo "    systemctl enable --now skiffd"
    echo "(after an upgrade: systemctl restart skiffd; the running pods stay up)"
else
    echo "systemd is not running here; start skiffd by hand with:"
    echo "    $bindir/skiffd --config /etc/skiff/skiffd.yaml"
fi
echo "Then put pod manifests in /etc/skiff/manifests and watch them with:"
echo "    $bindir/skiff get pods -A -o wide"
