#!/usr/bin/env bash
# Benchmarks the service proxy's iptables sync in throwaway network
# namespaces (never the host's rules): full sync vs a raw iptables-restore
# of the same texts at 1k/5k/10k Services x 4 endpoints, a one-endpoint
# change next to a raw restore of the same text, a periodic resync, the
# generator's memory, and then skiffd itself with that many Services
# (scripts/bench-proxy-daemon.sh: its memory, idle and peak).
#
#   sudo scripts/bench-proxy.sh                 # 1000,5000,10000
#   sudo SKIFF_BENCH_SIZES=2000 scripts/bench-proxy.sh
#   sudo SKIFF_BENCH_IPTABLES=legacy scripts/bench-proxy.sh   # or =nft
#   sudo PROFILE=debug scripts/bench-proxy.sh   # the debug build (a smoke run, not figures)
#
# Needs root, ip(8), nsenter(1) and iptables-restore/-save on PATH (nf_tables
# or legacy, whichever PATH gives).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "bench-proxy.sh: needs root (throwaway network namespaces)" >&2
    exit 1
fi
for tool in ip nsenter iptables-restore iptables-save; do
    command -v "$tool" >/dev/null || { echo "bench-proxy.sh: $tool not found" >&2; exit 1; }
done

case "${SKIFF_BENCH_IPTABLES:-}" in
    legacy|nft) restore="iptables-${SKIFF_BENCH_IPTABLES}-restore" ;;
    *) restore=iptables-restore ;;
esac
echo "iptables: $($restore --version 2>&1)"
echo "kernel:   $(uname -r), $(nproc) CPUs"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
bench_profile
cargo bench "${BENCH_PROFILE[@]}" --bench proxy_sync
# skiffd itself at the largest size: memory and time to program the rules.
echo
cargo build "${CARGO_PROFILE[@]}" --bins --quiet
BIN=$BIN SERVICES=$(tr ',' '\n' <<<"${SKIFF_BENCH_SIZES:-10000}" | sort -n | tail -1) scripts/bench-proxy-daemon.sh
