#!/usr/bin/env bash
# Network benchmark: same-node pod-to-pod TCP throughput through skiff's default CNI network
# (skiff-bridge cni0 + skiff-host-local + skiff-portmap) next to a raw veth pair between two
# network namespaces, measured in the same run with iperf3 (Debian's).
#
# Usage: sudo scripts/bench-network.sh   (from the repository root)
#
# skiffd runs inside a throwaway network namespace "host" on temp dirs; iperf3 runs in the pods'
# network namespaces with `nsenter --net=<run-dir>/netns/<pod uid>` (skiffd pins them there), so
# the busybox test image needs no iperf3. The raw pair is two more throwaway namespaces joined by
# one veth. Runs alternate raw / pod so that background load hits both alike. An EXIT trap
# removes everything, also on failure or Ctrl-C.
# Output goes to the terminal and to target/bench/network.txt.
#
# Knobs (environment): RUNS=5 SECONDS_PER_RUN=5 PROFILE=debug|release (skiff's binaries; the
# data path is the kernel's, so the profile does not matter for throughput)
set -euo pipefail

die() { echo "bench-network: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
[[ -f Cargo.toml && -f scripts/build-test-image.sh ]] || die "run from the repository root"

RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
PROFILE=${PROFILE:-debug}
IMAGE=skiff.test/busybox:latest

mkdir -p target/bench
OUT=target/bench/network.txt
exec > >(tee "$OUT") 2>&1

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_require iperf3 jq util-linux iproute2 iptables busybox-static

echo "building ($PROFILE)..."
if [[ $PROFILE == release ]]; then
    cargo build --release --bins -p skiff -p cni -q
else
    cargo build --bins -p skiff -p cni -q
fi
BIN=$PWD/target/$PROFILE

# ---- sandbox and cleanup -------------------------------------------------------------------
D=$(mktemp -d /tmp/skiff-netbench.XXXXXX)
TAG=$RANDOM$RANDOM
NS=skiff-nb-$TAG   # skiff's host
RA=skiff-nbA-$TAG  # raw veth ends
RB=skiff-nbB-$TAG
SOCK=$D/run/skiff.sock
SKIFFD_PID=
IPERF_PIDS=()
export SKIFF_SOCKET=$SOCK

cleanup() {
    local rc=$? p
    set +e
    for p in "${IPERF_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    if [[ -n $SKIFFD_PID ]] && kill -0 "$SKIFFD_PID" 2>/dev/null; then
        rm -f "$D"/manifests/*.yaml
        for _ in $(seq 200); do
            [[ $("$BIN/skiff" get pods -A -o json 2>/dev/null | jq '.items | length') == 0 ]] && break
            sleep 0.1
        done
        kill -TERM "$SKIFFD_PID"
        for _ in $(seq 100); do kill -0 "$SKIFFD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SKIFFD_PID" 2>/dev/null
    fi
    left=$(ls "$D/root/cni/networks/skiff" 2>/dev/null | grep -c '^[0-9]' || true)
    ((left == 0)) || echo "!!! SKIFF BUG: $left IP allocations left after all pods were removed"
    awk -v p="$D" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do echo "!!! mount left: $m"; umount -l "$m"; done
    for n in "$NS" "$RA" "$RB"; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$D"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# ---- raw veth pair -------------------------------------------------------------------------
echo "work dir $D"
ip netns add "$RA"
ip netns add "$RB"
ip -n "$RA" link add veth-a type veth peer name veth-b netns "$RB"
ip -n "$RA" addr add 10.250.0.1/24 dev veth-a
ip -n "$RB" addr add 10.250.0.2/24 dev veth-b
for n in "$RA" "$RB"; do ip -n "$n" link set lo up; done
ip -n "$RA" link set veth-a up
ip -n "$RB" link set veth-b up

# ---- skiff node with two pods --------------------------------------------------------------
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$D/manifests"
scripts/build-test-image.sh "$D/img" "$IMAGE" >/dev/null
nsenter --net="/run/netns/$NS" "$BIN/skiffd" --pod-manifest-path "$D/manifests" \
    --root-dir "$D/root" --run-dir "$D/run" --node-name bench --cni-conf-dir "$D/net.d" \
    >"$D/skiffd.log" 2>&1 &
SKIFFD_PID=$!
for _ in $(seq 200); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { cat "$D/skiffd.log"; die "skiffd did not create $SOCK"; }
"$BIN/skiff" image import "$D/img" >/dev/null
for p in server client; do
    cat >"$D/manifests/$p.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $p
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
EOF
done
for p in server client; do
    for _ in $(seq 300); do
        [[ $("$BIN/skiff" get pod "$p" -o json 2>/dev/null | jq -r .status.phase) == Running ]] && break
        sleep 0.1
    done
done
uid() { "$BIN/skiff" get pod "$1" -o json | jq -r .metadata.uid; }
S_NS=$D/run/netns/$(uid server)
C_NS=$D/run/netns/$(uid client)
S_IP=$("$BIN/skiff" get pod server -o json | jq -r .status.podIP)
[[ -e $S_NS && -e $C_NS && $S_IP != null ]] || { tail -20 "$D/skiffd.log"; die "pods not Running with an IP"; }

# ---- runs ----------------------------------------------------------------------------------
echo "iperf3 TCP, ${SECONDS_PER_RUN}s per run, $RUNS runs each, alternating raw veth / pod-to-pod..."
load_before=$(cut -d' ' -f1 /proc/loadavg)
iperf_alternating "raw veth" "/run/netns/$RA" "/run/netns/$RB" 10.250.0.1 pod-to-pod "$S_NS" "$C_NS" "$S_IP"
raw=$RUNS_A pod=$RUNS_B m_raw=$MEDIAN_A m_pod=$MEDIAN_B
r=$(ratio "$m_pod" "$m_raw")
ok=$(awk -v r="$r" 'BEGIN { print (r >= 0.9) ? "ok" : "MISSED" }')
echo
echo "same-node TCP throughput (iperf3, $(nproc) CPUs, 1-min load $load_before -> $(cut -d' ' -f1 /proc/loadavg))"
printf '  %-34s median %6.2f Gbit/s  (runs:%s)\n' "raw veth pair, two netns" "$m_raw" "$raw"
printf '  %-34s median %6.2f Gbit/s  (runs:%s)\n' "skiff pod -> pod (cni0 bridge)" "$m_pod" "$pod"
echo "  ratio pod/raw ${r}x  (target >= 0.9x: $ok)"
bench_result "same-node pod -> pod TCP (Gbit/s)" "$m_pod" "$m_raw (raw veth)" "${r}x" "pod/raw >= 0.9x" "$(met "$r" '>=' 0.9)"
echo "(also in $OUT)"
