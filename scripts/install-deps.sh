#!/usr/bin/env bash
# Install the Debian packages skiff needs to build, test and benchmark, when they are missing,
# and check that a Rust toolchain is there.
#
# Usage: sudo scripts/install-deps.sh
#
# Idempotent and quiet: when everything is installed it only runs one `dpkg-query`. It runs
# `apt-get update` only when something has to be installed.
#
# demo.sh, test.sh and install.sh `source` this file for `install_deps` and `find_cargo`;
# sourcing defines the functions and runs nothing.

# Build: a C toolchain and libseccomp (libcontainer links it). Demo and tests: a static busybox
# for the test image, ip/nsenter for throwaway network namespaces. Later tests and benchmarks:
# the reference runtimes, image tools, etcd, a registry, CNI plugins and network tools.
# Everything is installed without recommends, so podman's own helpers are named here: catatonit
# (the init of a pod's infra container: `podman kube play` fails without it), and netavark +
# aardvark-dns (podman's network, which the pod-start benchmark compares against).
# The registry tests make a TLS registry with htpasswd auth: openssl and apache2-utils; the
# proxy test pulls through tinyproxy (run by the test itself, on a throwaway netns's loopback).
# The API tests drive skiffd with a real client library too: python3-kubernetes.
# The DNS tests and benchmark: dig (bind9-dnsutils), dnsperf, and dnsmasq-base (the benchmark's
# peer; -base is the binary alone, without a service that would start on the host).
SKIFF_DEB_PACKAGES=(
    build-essential pkg-config libseccomp-dev
    busybox-static iproute2 util-linux curl python3
    runc podman catatonit netavark aardvark-dns conmon skopeo umoci etcd-server docker-registry
    openssl apache2-utils python3-kubernetes tinyproxy
    containernetworking-plugins
    iperf3 iptables conntrack ethtool jq
    bind9-dnsutils dnsperf dnsmasq-base
)

# install_deps: installs whatever in SKIFF_DEB_PACKAGES is missing; prints what it installs.
install_deps() {
    if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
        echo "install-deps: not a Debian-like system; make sure these are installed:" >&2
        echo "  ${SKIFF_DEB_PACKAGES[*]}" >&2
        return 0
    fi
    local missing=() pkg status
    for pkg in "${SKIFF_DEB_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        echo "install-deps: missing packages: ${missing[*]}" >&2
        echo "install-deps: run as root (sudo $0) to install them" >&2
        return 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1 </dev/null; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        echo "install-deps: apt-get failed (output above)" >&2
        return 1
    fi
    rm -f "$log"
    echo "install-deps: installed ${#missing[@]} package(s)"
}

# find_cargo: makes `cargo` callable, or explains how to get it and fails.
#
# `sudo` resets PATH, and rustup installs cargo in the invoking user's ~/.cargo/bin, so under
# sudo we also look there and point CARGO_HOME/RUSTUP_HOME at that user's directories (the
# toolchain and the crate cache are then shared, nothing is downloaded twice).
# fix_ownership below gives files root created there back to that user.
find_cargo() {
    command -v cargo >/dev/null && return 0
    local home=
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    fi
    local dir
    for dir in ${home:+"$home/.cargo/bin"} "${HOME:-/root}/.cargo/bin"; do
        if [[ -x $dir/cargo ]]; then
            export PATH="$dir:$PATH"
            if [[ -n $home && $dir == "$home/.cargo/bin" ]]; then
                export CARGO_HOME="$home/.cargo"
                [[ -d $home/.rustup ]] && export RUSTUP_HOME="$home/.rustup"
            fi
            return 0
        fi
    done
    cat >&2 <<'EOF'
install-deps: cargo not found (looked on PATH and in ~/.cargo/bin, also the sudo user's).
  skiff needs a Rust toolchain (edition 2024, Rust 1.85 or newer). Install it with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
  then open a new shell (or `. ~/.cargo/env`) and run this again.
EOF
    return 1
}

# fix_ownership DIR...: gives files root created under each DIR (target/, the sudo user's
# ~/.cargo) to the owner of DIR's parent (the checkout, the home directory), so that user's own
# later `cargo build` still works. Nothing to do when that owner is root, as in CI.
fix_ownership() {
    ((EUID == 0)) || return 0
    local d owner
    for d in "$@"; do
        [[ -d $d ]] || continue
        owner=$(stat -c %u "$(dirname "$(realpath "$d")")")
        ((owner != 0)) || continue
        find "$d" -xdev -user 0 -exec chown -h "$owner:" {} + 2>/dev/null || true
    done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    install_deps
    find_cargo
    echo "install-deps: all packages present; $(cargo --version)"
fi
