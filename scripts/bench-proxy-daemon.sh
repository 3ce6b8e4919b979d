#!/usr/bin/env bash
# skiffd itself at scale: N selector-less Services (default 10000) with 4
# manual endpoints each, dropped into the manifest directory of a skiffd that
# runs in a throwaway network namespace (never the host's rules). Prints the
# time from skiffd's start until every endpoint chain is in the kernel, and
# skiffd's memory then (VmRSS, and VmHWM: the peak). Called by
# scripts/bench-proxy.sh; runs alone too:
#
#   sudo scripts/bench-proxy-daemon.sh            # 10000 Services
#   sudo SERVICES=2000 scripts/bench-proxy-daemon.sh
#
# Needs a release build (cargo build --release), root, ip(8), nsenter(1).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench-proxy-daemon: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (throwaway network namespaces)"
N=${SERVICES:-10000}
BIN=${BIN:-target/release}
[[ -x $BIN/skiffd ]] || die "no $BIN/skiffd: run cargo build --release first"

NS=skiff-pxd-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
D=$(mktemp -d /tmp/skiff-pxd.XXXXXX)
PID=
cleanup() {
    [[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    # With a wrapper in SKIFFD_ENV (heaptrack, say) skiffd is its child, not $PID.
    pkill -KILL -f -- "--pod-manifest-path $D/manifests" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$D/manifests" "$D/staging"

# N Services and their Endpoints, 1000 per file (several documents each).
for ((f = 0; f * 1000 < N; f++)); do
    out=$D/staging/svc-$f.yaml
    for ((i = f * 1000; i < N && i < (f + 1) * 1000; i++)); do
        a=$((i / 60)) b=$(((i % 60) * 4))
        cat <<YAML
apiVersion: v1
kind: Service
metadata: {name: s$i}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: s$i}
subsets:
- addresses: [{ip: 10.$((100 + a / 256)).$((a % 256)).$((b + 1))}, {ip: 10.$((100 + a / 256)).$((a % 256)).$((b + 2))}, {ip: 10.$((100 + a / 256)).$((a % 256)).$((b + 3))}, {ip: 10.$((100 + a / 256)).$((a % 256)).$((b + 4))}]
  ports: [{port: 8080}]
---
YAML
    done >"$out"
done
mv "$D"/staging/*.yaml "$D/manifests/"

want=$((N * 4))
t0=${EPOCHREALTIME/[.,]/}
nsenter --net="/run/netns/$NS" env ${SKIFFD_ENV:-} "$BIN/skiffd" --pod-manifest-path "$D/manifests" \
    --root-dir "$D/root" --run-dir "$D/run" --node-name pxd --cni-conf-dir "$D/net.d" \
    >"$D/skiffd.log" 2>&1 &
PID=$!
# Poll the kernel (iptables-save of nat) until every endpoint chain is there.
seps=0
for _ in $(seq 600); do
    kill -0 "$PID" 2>/dev/null || { tail -20 "$D/skiffd.log"; die "skiffd exited"; }
    seps=$(nsenter --net="/run/netns/$NS" iptables-save -t nat | grep -c '^:SKIFF-SEP-' || true)
    [[ $seps -ge $want ]] && break
    sleep 0.5
done
t1=${EPOCHREALTIME/[.,]/}
[[ $seps -ge $want ]] || { tail -20 "$D/skiffd.log"; die "only $seps of $want endpoint chains after 300 s"; }
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$PID/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$PID/status")
printf 'skiffd with %d Services x 4 endpoints: rules in the kernel %.1f s after start; ' \
    "$N" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e6 }')"
printf 'VmRSS %.1f MiB, peak (VmHWM) %.1f MiB (target < 150 MiB)\n' \
    "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')"
# And once the daemon is idle again (the views published, freed memory
# handed back): sampled over the next 10 s.
low=$rss
for _ in $(seq 20); do
    sleep 0.5
    r=$(awk '/^VmRSS/ { print $2 }' "/proc/$PID/status")
    ((r < low)) && low=$r
done
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$PID/status")
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
low_mib=$(awk -v k="$low" 'BEGIN { printf "%.1f", k / 1024 }')
hwm_mib=$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')
# The 150 MiB goal is for 10k Services; smaller runs (--quick) report without a verdict.
goal=- ok=-
((N == 10000)) && goal="< 150 MiB" ok=$(met "$hwm_mib" '<' 150)
bench_result "skiffd with $N Services x 4 endpoints, peak RSS (MiB)" "$hwm_mib (idle $low_mib)" "-" "-" "$goal" "$ok"
printf 'skiffd idle afterwards: VmRSS %.1f MiB (lowest over 10 s), peak (VmHWM) %.1f MiB\n' \
    "$(awk -v k="$low" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')"
kill -TERM "$PID"
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
