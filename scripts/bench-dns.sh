#!/usr/bin/env bash
# Cluster DNS benchmark (issue 12): dnsperf (Debian's) against skiffd's resolver next to dnsmasq
# (Debian's dnsmasq-base) answering the same names, measured in the same run:
#   - service names: SERVICES ClusterIP Services asked by their full names
#     (`svc-N.default.svc.cluster.local`); skiffd answers from its snapshot of the store, dnsmasq
#     from a hosts file with the same names and addresses (TTL 5 s, as skiffd's);
#   - forwarded names: NAMES names outside the cluster (`name-N.bench.example`), answered from
#     each one's cache; both forward to the same upstream (a third dnsmasq on 127.0.0.2 with the
#     names in a hosts file, TTL 300 s) and are warmed with one pass over the names first.
# Each is measured twice: the most queries a second one core answers (dnsperf with up to
# OUTSTANDING queries in flight; RUNS runs of SECONDS_PER_RUN s, skiff and dnsmasq alternating;
# the median), and the latency at a fixed LATENCY_QPS (dnsperf -v, every answer's latency: p50
# and p99, the median over the runs). skiffd (every thread of it) and the dnsmasq peer are pinned to
# the same CPU with taskset, dnsperf to the others, so the figures are one core's: issue 12's
# goal is >= 50k queries/s on one core for service names. CoreDNS's own scaling guide measured
# 33,669 queries/s for internal names on a 2-vCPU node with both vCPUs busy (about 17k a core).
#
# Usage: sudo scripts/bench-dns.sh   (from the repository root)
#
# skiffd runs in a throwaway network namespace "host" on temp dirs with
# `--cluster-dns-rate-limit 0` (its per-client limit of 2000 queries/s would otherwise be what
# is measured: dnsperf is one client address) and one pod, so that the pod network's gateway,
# where the resolver listens, exists. dnsperf asks the resolver on that gateway, and dnsmasq on
# 127.0.0.3, both over the namespace's loopback. An EXIT trap removes everything, also on
# failure or Ctrl-C. Output goes to the terminal and to target/bench/dns.txt.
#
# Knobs (environment): SERVICES=1000 NAMES=1000 RUNS=3 SECONDS_PER_RUN=5 LATENCY_QPS=10000
# OUTSTANDING=100 PROFILE=release|debug (figures only mean something on release)
set -euo pipefail

die() { echo "bench-dns: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
[[ -f Cargo.toml && -f scripts/build-test-image.sh ]] || die "run from the repository root"

SERVICES=${SERVICES:-1000}
NAMES=${NAMES:-1000}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
LATENCY_QPS=${LATENCY_QPS:-10000}
# Queries in flight at once: enough to keep one core busy, few enough that a burst fits the
# servers' default socket buffer (a dropped query holds its slot until dnsperf's timeout).
OUTSTANDING=${OUTSTANDING:-100}
IMAGE=skiff.test/busybox:latest
RESOLVER=10.244.0.1   # the pod network's gateway: skiffd's resolver
PEER=127.0.0.3        # dnsmasq answering the same names
UPSTREAM=127.0.0.2    # the upstream both forward to
GOAL=50000

mkdir -p target/bench
OUT=target/bench/dns.txt
exec > >(tee "$OUT") 2>&1

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_require dnsperf dnsmasq-base bind9-dnsutils jq util-linux iproute2 iptables busybox-static
bench_profile

echo "building ($PROFILE)..."
cargo build "${CARGO_PROFILE[@]}" --bins -p skiff -p cni -q

# One CPU for the servers, the rest for dnsperf.
ncpu=$(nproc)
if ((ncpu >= 2)); then
    SERVER_CPU=$((ncpu - 1))
    CLIENT_CPUS=0-$((ncpu - 2))
    server_pin=(taskset -c "$SERVER_CPU")
    client_pin=(taskset -c "$CLIENT_CPUS")
else
    echo "only one CPU: servers and dnsperf share it (figures are lower than one core's)"
    server_pin=() client_pin=()
fi

# ---- sandbox and cleanup -------------------------------------------------------------------
D=$(mktemp -d /tmp/skiff-dnsbench.XXXXXX)
TAG=$RANDOM$RANDOM
NS=skiff-db-$TAG
SOCK=$D/run/skiff.sock
SKIFFD_PID=
DNSMASQ_PIDS=()
export SKIFF_SOCKET=$SOCK
# Runs a command in the namespace. Background processes are started with nsenter itself, not
# through this function: `in_ns ... &` would fork a subshell and $! would be its pid.
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

cleanup() {
    local rc=$? p
    set +e
    for p in "${DNSMASQ_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [[ -n $SKIFFD_PID ]] && kill -0 "$SKIFFD_PID" 2>/dev/null; then
        rm -f "$D"/manifests/*.yaml
        for _ in $(seq 200); do
            [[ $("$BIN/skiff" get pods -A -o json 2>/dev/null | jq '.items | length') == 0 ]] && break
            sleep 0.1
        done
        kill -TERM "$SKIFFD_PID"
        for _ in $(seq 100); do kill -0 "$SKIFFD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SKIFFD_PID" 2>/dev/null
        wait "$SKIFFD_PID" 2>/dev/null
    fi
    # nsenter and taskset exec what they run: these pids are the servers themselves.
    for p in "${DNSMASQ_PIDS[@]}" $SKIFFD_PID; do
        kill -0 "$p" 2>/dev/null && echo "!!! process $p still runs after cleanup"
    done
    awk -v p="$D" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do echo "!!! mount left: $m"; umount -l "$m"; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$D"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the host: loopback, an uplink with a default route --------------------------------------
echo "work dir $D, netns $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add uplink0 type veth peer name uplink1
ip -n "$NS" addr add 192.0.2.10/24 dev uplink0
ip -n "$NS" link set uplink1 up
ip -n "$NS" link set uplink0 up
ip -n "$NS" route add default via 192.0.2.1 dev uplink0

# ---- the upstream: dnsmasq with the forwarded names ------------------------------------------
# dnsmasq_serve NAME ADDRESS ARGS...: a dnsmasq in the namespace, in the foreground, no config
# file, no /etc/hosts, no resolv.conf, on ADDRESS only; pinned with the servers.
dnsmasq_serve() {
    local name=$1 addr=$2
    shift 2
    nsenter --net="/run/netns/$NS" "${server_pin[@]}" dnsmasq --keep-in-foreground \
        --conf-file=/dev/null --no-hosts --no-resolv --user=root --pid-file= --bind-interfaces \
        --listen-address="$addr" --port=53 "$@" >"$D/dnsmasq-$name.log" 2>&1 &
    DNSMASQ_PIDS+=($!)
}
for ((i = 0; i < NAMES; i++)); do
    echo "192.0.$((2 + i / 250)).$((1 + i % 250)) name-$i.bench.example"
done >"$D/upstream.hosts"
dnsmasq_serve upstream "$UPSTREAM" --addn-hosts="$D/upstream.hosts" --local-ttl=300 --cache-size=0
for ((i = 0; i < NAMES; i++)); do echo "name-$i.bench.example A"; done >"$D/forwarded.txt"

# ---- skiffd with SERVICES Services and one pod ------------------------------------------------
mkdir -p "$D/manifests"
echo "nameserver $UPSTREAM" >"$D/resolv.conf"
scripts/build-test-image.sh "$D/img" "$IMAGE" >/dev/null
nsenter --net="/run/netns/$NS" "${server_pin[@]}" "$BIN/skiffd" --pod-manifest-path "$D/manifests" \
    --root-dir "$D/root" --run-dir "$D/run" --node-name dnsbench --cni-conf-dir "$D/net.d" \
    --resolv-conf "$D/resolv.conf" --cluster-dns-rate-limit 0 \
    >"$D/skiffd.log" 2>&1 &
SKIFFD_PID=$!
for _ in $(seq 200); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { cat "$D/skiffd.log"; die "skiffd did not create $SOCK"; }
"$BIN/skiff" image import "$D/img" >/dev/null
cat >"$D/manifests/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: idle}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: $IMAGE, imagePullPolicy: Never, command: [sleep, "3600"]}
EOF
for ((i = 0; i < SERVICES; i++)); do
    printf 'apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d}\nspec: {ports: [{name: http, port: 80}]}\n---\n' "$i"
done >"$D/services.yaml.tmp"
mv "$D/services.yaml.tmp" "$D/manifests/services.yaml"
for _ in $(seq 600); do
    [[ $("$BIN/skiff" get pod idle -o json 2>/dev/null | jq -r .status.phase) == Running ]] &&
        [[ $("$BIN/skiff" get svc -o json | jq '[.items[] | select(.metadata.name | startswith("svc-"))] | length') == "$SERVICES" ]] &&
        break
    sleep 0.1
done
"$BIN/skiff" get svc -o json |
    jq -r '.items[] | select(.metadata.name | startswith("svc-")) | "\(.spec.clusterIP) \(.metadata.name).default.svc.cluster.local"' \
        >"$D/cluster.hosts"
(($(wc -l <"$D/cluster.hosts") == SERVICES)) || { tail -20 "$D/skiffd.log"; die "not every Service got its cluster IP"; }
awk '{ print $2 " A" }' "$D/cluster.hosts" >"$D/services.txt"
# The peer: the same service names from a hosts file, the rest forwarded to the same upstream.
dnsmasq_serve peer "$PEER" --addn-hosts="$D/cluster.hosts" --local-ttl=5 --cache-size=10000 \
    --server="$UPSTREAM"

# Both answer the same before anything is measured (skiffd once its snapshot has every Service).
last=$(tail -1 "$D/cluster.hosts")
for _ in $(seq 200); do
    [[ $(in_ns dig "@$RESOLVER" +short +time=1 +tries=1 "${last#* }") == "${last%% *}" ]] && break
    sleep 0.1
done
for server in "$RESOLVER" "$PEER"; do
    got=$(in_ns dig "@$server" +short +time=1 +tries=1 "${last#* }")
    [[ $got == "${last%% *}" ]] || { tail -20 "$D/skiffd.log"; die "$server answers ${last#* } with '$got', not ${last%% *}"; }
    got=$(in_ns dig "@$server" +short +time=2 +tries=1 name-0.bench.example)
    [[ $got == 192.0.2.1 ]] || die "$server answers name-0.bench.example with '$got', not 192.0.2.1"
done

# ---- measuring ------------------------------------------------------------------------------
# dnsperf_run SERVER FILE ARGS...: one dnsperf run (pinned to the client CPUs); its output.
dnsperf_run() {
    local server=$1 file=$2
    shift 2
    in_ns "${client_pin[@]}" dnsperf -s "$server" -d "$file" -c 4 "$@" 2>&1
}
# Warm both caches with one pass over the forwarded names.
for server in "$RESOLVER" "$PEER"; do
    dnsperf_run "$server" "$D/forwarded.txt" -n 1 -q 50 >/dev/null
done

# qps SERVER FILE: queries/s answered at full load; fails loudly on anything but NOERROR.
qps() {
    local out
    out=$(dnsperf_run "$1" "$2" -q "$OUTSTANDING" -l "$SECONDS_PER_RUN")
    grep -q 'Response codes:  *NOERROR [0-9]* (100.00%)' <<<"$out" ||
        { echo "$out" >&2; die "$1: answers other than NOERROR"; }
    awk '/Queries per second:/ { printf "%.0f", $4 }' <<<"$out"
}
# latency SERVER FILE: "p50 p99" in ms at LATENCY_QPS (timeouts count as 5 s).
latency() {
    dnsperf_run "$1" "$2" -q "$OUTSTANDING" -l "$SECONDS_PER_RUN" -Q "$LATENCY_QPS" -v |
        awk '/^> T / { print 5; next } /^> / { print $NF }' | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan nan"; exit }
            i50 = int(NR * 0.50); i99 = int(NR * 0.99); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
            printf "%.3f %.3f\n", v[i50] * 1000, v[i99] * 1000 }'
}

declare -A Q P50 P99
load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "dnsperf, ${SECONDS_PER_RUN}s per run, $RUNS runs, skiffd and dnsmasq alternating; servers on CPU ${SERVER_CPU:-any}, dnsperf on ${CLIENT_CPUS:-any}"
for i in $(seq "$RUNS"); do
    for kind in services forwarded; do
        for who in skiff peer; do
            server=$RESOLVER
            [[ $who == peer ]] && server=$PEER
            q=$(qps "$server" "$D/$kind.txt")
            read -r p50 p99 < <(latency "$server" "$D/$kind.txt")
            Q[$who-$kind]+=" $q" P50[$who-$kind]+=" $p50" P99[$who-$kind]+=" $p99"
            printf '  run %d: %-9s %-5s %7d queries/s, at %d/s p50 %s ms p99 %s ms\n' \
                "$i" "$kind" "$who" "$q" "$LATENCY_QPS" "$p50" "$p99"
        done
    done
done

# ---- report ---------------------------------------------------------------------------------
echo
echo "cluster DNS on one core (dnsperf, $(nproc) CPUs, $PROFILE build, 1-min load $load_before -> $(cut -d' ' -f1 /proc/loadavg))"
for kind in services forwarded; do
    qs=$(median "${Q[skiff-$kind]}") qp=$(median "${Q[peer-$kind]}")
    s99=$(median "${P99[skiff-$kind]}") p99=$(median "${P99[peer-$kind]}")
    s50=$(median "${P50[skiff-$kind]}") p50=$(median "${P50[peer-$kind]}")
    r=$(ratio "$qs" "$qp") r99=$(ratio "$s99" "$p99")
    if [[ $kind == services ]]; then
        label="$SERVICES service names"
        peer_label="dnsmasq, hosts file"
    else
        label="$NAMES forwarded names, cached"
        peer_label="dnsmasq, cache"
    fi
    printf '  %-34s skiffd %7d queries/s  dnsmasq %7d queries/s  ratio skiffd/dnsmasq %sx\n' \
        "$label" "$qs" "$qp" "$r"
    printf '  %-34s p50 %s / %s ms, p99 %s / %s ms at %d queries/s (skiffd / dnsmasq; p99 ratio %sx)\n' \
        "" "$s50" "$p50" "$s99" "$p99" "$LATENCY_QPS" "$r99"
    goal=- ok=-
    if [[ $kind == services && $PROFILE == release ]]; then
        goal=">= $GOAL qps, one core" ok=$(met "$qs" '>=' "$GOAL")
        echo "  goal for service names: >= $GOAL queries/s on one core: $ok"
    fi
    bench_result "cluster DNS, $label, one core (queries/s)" "$qs" "$qp ($peer_label)" "${r}x" "$goal" "$ok"
    bench_result "cluster DNS, $label, p99 at $LATENCY_QPS/s (ms)" "$s99" "$p99 ($peer_label)" "${r99}x" "-" "-"
done
echo "  (CoreDNS's scaling guide: 33,669 queries/s for internal names on 2 busy vCPUs, about 17k a core)"
echo "(also in $OUT)"
