#!/usr/bin/env bash
# Overlay benchmark (issue #6), in one run on one lab (scripts/lab.sh):
#   1. cross-host pod-to-pod TCP throughput over the VXLAN overlay next to host-to-host throughput
#      over the raw underlay (iperf3, runs alternating; target overlay >= 0.8x underlay);
#   2. with HOSTS hosts (the last one joining late): the time from the new host's skiffd start
#      until every other host has its route (target < 2 s), and until a Service endpoint on it
#      answers from every other host's network namespace.
# It prints figures and ratios and asserts nothing. The join times come from polling every
# other host in turn (`ip route`, `curl` to the Service from its netns), so each is an upper
# bound, late by up to one polling round (~10 ms per host on an idle machine).
#
# Usage: sudo scripts/bench-overlay.sh   (from the repository root)
#
# Knobs (environment): RUNS=3 SECONDS_PER_RUN=5 HOSTS=10 PROFILE=debug|release
#   FLAGS="..." extra skiffd flags for every host (e.g. FLAGS=--vxlan-tx-checksum-off)
# iperf3 runs in the pods' network namespaces (`nsenter --net=<run-dir>/netns/<pod uid>`), so the
# busybox test image needs no iperf3. The lab gets a random name and an EXIT trap removes it, also
# on failure or Ctrl-C. Output goes to the terminal and to target/bench/overlay.txt.
set -euo pipefail

die() { echo "bench-overlay: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
[[ -f Cargo.toml && -f scripts/lab.sh ]] || die "run from the repository root"

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
HOSTS=${HOSTS:-10}
PROFILE=${PROFILE:-debug}
FLAGS=${FLAGS:-}
((HOSTS >= 3)) || die "HOSTS must be at least 3"

mkdir -p target/bench
OUT=target/bench/overlay.txt
exec > >(tee "$OUT") 2>&1

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_require iperf3 jq etcd-server util-linux curl iproute2 busybox-static

echo "building ($PROFILE)..."
if [[ $PROFILE == release ]]; then
    cargo build --release --bins -p skiff -p cni -q
else
    cargo build --bins -p skiff -p cni -q
fi
BIN=$PWD/target/$PROFILE
IMG=$PWD/target/test-image
scripts/build-test-image.sh "$IMG" >/dev/null

NAME=skiff-bench-$RANDOM
RUN=/run/skiff-lab/$NAME
STATE=/var/lib/skiff-lab/$NAME
IPERF_PIDS=()
D=$(mktemp -d /tmp/skiff-overlaybench.XXXXXX)
lab() { local c=$1; shift; bash scripts/lab.sh "$c" --name "$NAME" "$@"; }
cleanup() {
    local rc=$? p
    set +e
    for p in "${IPERF_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    lab down >/dev/null 2>&1 || lab down
    rm -rf "$D"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

on() { local h=$1; shift; SKIFF_SOCKET=$RUN/$h/run/skiff.sock "$BIN/skiff" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

pod_manifest() { # NAME APP COMMAND
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {app: $2}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: skiff.test/busybox:latest
    imagePullPolicy: Never
    command: [sh, -c, "$3"]
    ports: [{name: http, containerPort: 8080}]
EOF
}
SLEEP="trap 'exit 0' TERM; while true; do sleep 1 & wait \$!; done"
WEB="mkdir -p /www && echo late > /www/index.html && exec httpd -f -p 8080 -h /www"

wait_running() { # HOST POD -> pod IP
    local i p
    for ((i = 0; i < 600; i++)); do
        p=$(on "$1" get pod "$2" -o json 2>/dev/null || true)
        if [[ $(jq -r '.status.phase // empty' <<<"$p" 2>/dev/null) == Running ]]; then
            jq -r .status.podIP <<<"$p"
            return
        fi
        sleep 0.1
    done
    die "$1: pod $2 not Running after 60 s"
}
pod_netns() { echo "$RUN/$1/run/netns/$(on "$1" get pod "$2" -o json | jq -r .metadata.uid)"; }


# ---- the lab -------------------------------------------------------------------------------
echo "lab $NAME: $((HOSTS - 1)) hosts now, h$HOSTS joins later${FLAGS:+ (skiffd flags: $FLAGS)}"
lab up "$((HOSTS - 1))" --bin "$BIN" --image "$IMG" ${FLAGS:+--flags "$FLAGS"} 2>&1 | grep -v '^export\|^nsenter\|^#\|^$' || true
[[ -f $RUN/lab.env ]] || die "lab up failed"
pod_manifest server bench "$SLEEP" >"$D/server.yaml"
pod_manifest client bench "$SLEEP" >"$D/client.yaml"
pod_manifest late late "$WEB" >"$D/late.yaml"
cat >"$D/late-svc.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: late
spec:
  selector: {app: late}
  ports:
  - port: 80
    targetPort: http
EOF
lab apply h1 "$D/server.yaml" "$D/late-svc.yaml"
lab apply h2 "$D/client.yaml"
S_IP=$(wait_running h1 server)
wait_running h2 client >/dev/null
S_NS=$(pod_netns h1 server)
C_NS=$(pod_netns h2 client)

# ---- 1. throughput -------------------------------------------------------------------------
echo "iperf3 TCP h2 -> h1, ${SECONDS_PER_RUN}s per run, $RUNS runs each, alternating underlay / overlay..."
load_before=$(cut -d' ' -f1 /proc/loadavg)
iperf_alternating "underlay host-to-host" "/run/netns/$NAME-h1" "/run/netns/$NAME-h2" 10.77.0.11 \
    "overlay pod-to-pod" "$S_NS" "$C_NS" "$S_IP"
under=$RUNS_A over=$RUNS_B m_under=$MEDIAN_A m_over=$MEDIAN_B
r=$(ratio "$m_over" "$m_under")

# ---- 2. a host joins -----------------------------------------------------------------------
NEW=h$HOSTS
others=()
for ((i = 1; i < HOSTS; i++)); do others+=("h$i"); done
# The Service must be known everywhere before the new host starts (shared through etcd).
VIP=
for ((i = 0; i < 300; i++)); do
    VIP=$(on "h$((HOSTS - 1))" get svc late -o json 2>/dev/null | jq -r '.spec.clusterIP // empty' || true)
    [[ -n $VIP ]] && break
    sleep 0.1
done
[[ -n $VIP ]] || echo "  (Service late did not reach h$((HOSTS - 1)) within 30 s: Services are not shared; endpoint times will be n/a)"
lab add --no-start 2>/dev/null
lab apply "$NEW" "$D/late.yaml"
lab start "$NEW" --no-wait 2>/dev/null
T0=$(cat "$RUN/$NEW/started")
declare -A t_route t_ep
subnet= t_subnet=
deadline=$(($(date +%s) + 60))
while (($(date +%s) < deadline)); do
    if [[ -z $subnet ]]; then
        subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$RUN/$NEW/run/subnet.env" 2>/dev/null || true)
        if [[ -n $subnet ]]; then
            t_subnet=$(since "$T0" "$(now)")
            subnet=$(awk -F'[./]' '{ printf "%s.%s.%s.0/24", $1, $2, $3 }' <<<"$subnet")
        fi
    fi
    pending=0
    for h in "${others[@]}"; do
        if [[ -n $subnet && -z ${t_route[$h]:-} ]]; then
            if [[ -n $(ip -n "$NAME-$h" route show "$subnet" dev skiff.1 2>/dev/null) ]]; then
                t_route[$h]=$(since "$T0" "$(now)")
            fi
        fi
        if [[ -n $VIP && -z ${t_ep[$h]:-} ]]; then
            if [[ $(nsenter --net="/run/netns/$NAME-$h" curl -sf -m 0.5 "http://$VIP/" 2>/dev/null) == late ]]; then
                t_ep[$h]=$(since "$T0" "$(now)")
            fi
        fi
        [[ -z ${t_route[$h]:-} || (-n $VIP && -z ${t_ep[$h]:-}) ]] && pending=1
    done
    ((pending)) || break
    sleep 0.02
done
max_of() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -1; }
routes=${t_route[*]:-} eps=${t_ep[*]:-}
n_routes=$(wc -w <<<"$routes") n_eps=$(wc -w <<<"$eps")
max_route=$( ((n_routes == ${#others[@]})) && max_of "$routes" || echo "n/a (${n_routes}/${#others[@]} hosts within 60 s)")
max_ep=$( ((n_eps == ${#others[@]})) && max_of "$eps" || echo "n/a (${n_eps}/${#others[@]} hosts within 60 s)")

# ---- report --------------------------------------------------------------------------------
echo
echo "overlay benchmark ($(nproc) CPUs, 1-min load $load_before -> $(cut -d' ' -f1 /proc/loadavg), skiffd $PROFILE${FLAGS:+, $FLAGS})"
echo "cross-host TCP throughput (iperf3, $RUNS x ${SECONDS_PER_RUN}s):"
printf '  %-40s median %6.2f Gbit/s  (runs:%s)\n' "underlay host -> host (veth + bridge)" "$m_under" "$under"
printf '  %-40s median %6.2f Gbit/s  (runs:%s)\n' "overlay pod -> pod (VXLAN skiff.1)" "$m_over" "$over"
echo "  ratio overlay/underlay ${r}x  (target >= 0.8x)"
echo "host $NEW joins a lab of $((HOSTS - 1)) (times from its skiffd start):"
echo "  its subnet leased (subnet.env written):           ${t_subnet:-n/a} s"
echo "  every other host has its route:                   $max_route s  (target < 2 s)"
echo "  its Service endpoint answers from every host:     $max_ep s  (includes importing the image and starting the pod)"
for h in "${others[@]}"; do
    printf '    %-4s route %-8s endpoint %s\n' "$h" "${t_route[$h]:-n/a}" "${t_ep[$h]:-n/a}"
done
echo "(also in $OUT)"
bench_result "cross-host pod -> pod TCP over VXLAN (Gbit/s)" "$m_over" "$m_under (underlay)" "${r}x" \
    "overlay/underlay >= 0.8x" "$(met "$r" '>=' 0.8)"
bench_result "a host joins $((HOSTS - 1)): every host has its route (s)" "${max_route%% *}" "-" "-" "< 2 s" \
    "$(met "${max_route%% *}" '<' 2)"
