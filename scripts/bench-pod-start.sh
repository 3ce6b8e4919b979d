#!/usr/bin/env bash
# Pod-start benchmark: skiff vs `podman kube play` vs `runc run -d`, same busybox image, one run.
#
# Usage: sudo scripts/bench-pod-start.sh   (from the repository root)
#
# Measures, all in one run so the ratios compare like with like on a noisy machine:
#   1. skiff: manifest file renamed into the manifest dir -> pod Running (20 pods, one at a time)
#   2. skiff: 50 manifests renamed in at once -> all Running; then skiffd and shim RSS
#   3. podman kube play of the same pod YAML, until the command returns: once with
#      `--network none`, once with podman's own network (netavark bridge podman0, created inside
#      the throwaway netns), since skiff pods always get their CNI network now
#   4. runc run -d of a bundle with the same rootfs, until the command returns
# The skiff timings come from a small driver (benches/pod_start.rs) that polls the API over the
# unix socket every 2 ms without spawning processes. Everything runs inside a throwaway network
# namespace and a temp dir, which an EXIT trap removes, also on failure or Ctrl-C.
# Output goes to the terminal and to target/bench/pod-start.txt.
#
# Knobs (environment): SINGLE_RUNS=20 BURST=50 PODMAN_RUNS=10 PODMAN_NET_RUNS=10 RUNC_RUNS=20
#   SKIFF_LOG_LEVEL=info PROFILE=release|debug
set -euo pipefail

die() { echo "bench-pod-start: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
[[ -f Cargo.toml && -f scripts/build-test-image.sh ]] || die "run from the repository root"

SINGLE_RUNS=${SINGLE_RUNS:-20}
BURST=${BURST:-50}
PODMAN_RUNS=${PODMAN_RUNS:-10}
PODMAN_NET_RUNS=${PODMAN_NET_RUNS:-$PODMAN_RUNS}
RUNC_RUNS=${RUNC_RUNS:-20}
SKIFF_LOG_LEVEL=${SKIFF_LOG_LEVEL:-info}
IMAGE=skiff.test/busybox:latest

mkdir -p target/bench
OUT=target/bench/pod-start.txt
exec > >(tee "$OUT") 2>&1

# ---- tools ---------------------------------------------------------------------------------
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
# podman's pods need catatonit (the infra container's init) and its network netavark +
# aardvark-dns: Debian only recommends them, so a --no-install-recommends podman lacks them.
bench_require podman catatonit netavark aardvark-dns conmon runc skopeo umoci curl jq \
    util-linux iproute2 busybox-static

bench_profile
echo "building (cargo build ${CARGO_PROFILE[*]} --bins -p skiff -p cni; bench driver)..."
# -p cni: skiff's CNI plugins must sit next to skiffd (its default --cni-bin-dir).
cargo build "${CARGO_PROFILE[@]}" --bins -p skiff -p cni -q
for b in skiffd skiff skiff-shim skiff-shim-mon skiff-bridge skiff-host-local skiff-portmap; do
    [[ -x $BIN/$b ]] || die "$BIN/$b did not build"
done
DRIVER=$(cargo bench "${BENCH_PROFILE[@]}" --bench pod_start --no-run --message-format=json -q 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "pod_start") | .executable')
[[ -x $DRIVER ]] || die "bench driver did not build (cargo bench --bench pod_start --no-run)"

# ---- sandbox and cleanup -------------------------------------------------------------------
D=$(mktemp -d /tmp/skiff-bench.XXXXXX)
NS=skiff-bench-$RANDOM$RANDOM
SOCK=$D/run/skiff.sock
SKIFFD_PID=
PODMAN=(podman --root "$D/podman/root" --runroot "$D/podman/runroot" --tmpdir "$D/podman/tmp"
    --storage-driver overlay)
export CONTAINERS_CONF=$D/containers.conf
LEFTOVERS=0

# Stops skiffd the orderly way: remove all manifests, wait until no pods are listed, SIGTERM.
stop_skiffd() {
    [[ -n $SKIFFD_PID ]] || return 0
    if kill -0 "$SKIFFD_PID" 2>/dev/null; then
        "$DRIVER" drain "$SOCK" "$D/manifests" 60 >/dev/null ||
            echo "!!! skiff: pods still listed 60 s after all manifests were removed"
        kill -TERM "$SKIFFD_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SKIFFD_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SKIFFD_PID" 2>/dev/null; then
            echo "!!! skiff: skiffd still alive 10 s after SIGTERM; killing it"
            kill -KILL "$SKIFFD_PID" 2>/dev/null || true
        fi
    fi
    wait "$SKIFFD_PID" 2>/dev/null || true
    SKIFFD_PID=
}

# Mounts at or below $1, deepest first.
mounts_under() {
    awk -v p="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' \
        /proc/self/mountinfo | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-
}

# Anything skiff leaves behind after all its pods are gone and skiffd stopped is a skiff bug.
check_skiff_leftovers() {
    local pids m
    pids=$(pgrep -f "skiff-shim(-mon supervise| start| finish) .*$D" || true)
    if [[ -n $pids ]]; then
        LEFTOVERS=1
        echo "!!! SKIFF BUG: skiff-shim processes left after all pods were removed and skiffd stopped:"
        ps -o pid=,rss=,args= -p "${pids//$'\n'/,}" | cut -c1-200 | sed 's/^/!!!   /'
        kill -KILL $pids 2>/dev/null || true
    fi
    local ips
    ips=$(ls "$D/root/cni/networks/skiff" 2>/dev/null | grep '^[0-9]' || true)
    if [[ -n $ips ]]; then
        LEFTOVERS=1
        echo "!!! SKIFF BUG: pod IPs still allocated after all pods were removed:" $ips
    fi
    for dir in "$D/root" "$D/run"; do
        while read -r m; do
            [[ -n $m ]] || continue
            LEFTOVERS=1
            echo "!!! SKIFF BUG: mount left: $m"
            umount -l "$m" || true
        done < <(mounts_under "$dir")
    done
}

cleanup() {
    local rc=$?
    set +e
    stop_skiffd
    check_skiff_leftovers
    if [[ -d $D/podman/root ]]; then
        "${PODMAN[@]}" pod rm -f -a >/dev/null 2>&1
        "${PODMAN[@]}" rm -f -a >/dev/null 2>&1
    fi
    if [[ -d $D/runc-state ]]; then
        for id in $(runc --root "$D/runc-state" list -q 2>/dev/null); do
            runc --root "$D/runc-state" delete -f "$id" >/dev/null 2>&1
        done
    fi
    # podman's overlay driver keeps a private bind mount of its storage dir; expected, not a leak.
    while read -r m; do [[ -n $m ]] && umount -l "$m"; done < <(mounts_under "$D")
    ip netns del "$NS" 2>/dev/null
    rm -rf "$D"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- statistics ----------------------------------------------------------------------------
# stats "v1 v2 ..." -> "median p90 min" (p90 by nearest rank)
stats() {
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "nan nan nan"; exit }
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            r = int(0.9 * NR); if (r < 0.9 * NR) r++; if (r < 1) r = 1
            printf "%.1f %.1f %.1f\n", med, v[r], v[1]
        }'
}
field() { cut -d' ' -f"$2" <<<"$1"; }
# now_ms: wall clock in ms, without forking.
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)).$(((t % 1000) / 100)); }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "nan" }'; }

pod_yaml() {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
EOF
}

# ---- setup ---------------------------------------------------------------------------------
# Neither skiff nor podman may touch the real host's network config; checked at the end.
host_net_files() { ls -l --time-style=+%s /etc/cni/net.d /etc/containers/networks /var/lib/cni 2>&1 || true; }
HOST_NET_BEFORE=$(host_net_files)
echo "work dir $D, netns $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$D/manifests" "$D/staging"
scripts/build-test-image.sh "$D/img" "$IMAGE" >/dev/null

nsenter --net="/run/netns/$NS" "$BIN/skiffd" --pod-manifest-path "$D/manifests" \
    --root-dir "$D/root" --run-dir "$D/run" --node-name bench --log-level "$SKIFF_LOG_LEVEL" \
    --cni-conf-dir "$D/net.d" >"$D/skiffd.log" 2>&1 &
SKIFFD_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { cat "$D/skiffd.log"; die "skiffd did not create $SOCK"; }
[[ -f $D/net.d/10-skiff.conflist ]] || die "skiffd did not write its default network into $D/net.d"
SKIFF_SOCKET=$SOCK "$BIN/skiff" image import "$D/img" >/dev/null

# ---- 2. podman kube play -------------------------------------------------------------------
echo "podman: importing the image, warm-up, then $PODMAN_RUNS kube play runs..."
mkdir -p "$D/podman/root" "$D/podman/runroot" "$D/podman/tmp" "$D/podman/yaml"
# network_config_dir keeps podman's network files (and netavark's) off the real /etc.
mkdir -p "$D/podman/net.d"
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000","nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
network_config_dir = "$D/podman/net.d"
EOF
skopeo copy -q "oci:$D/img:latest" \
    "containers-storage:[overlay@$D/podman/root+$D/podman/runroot]$IMAGE" >/dev/null
pn() { nsenter --net="/run/netns/$NS" "${PODMAN[@]}" "$@"; }
podman_play() { # name [network] -> prints elapsed ms
    local y=$D/podman/yaml/$1.yaml t0 t1 net=()
    [[ ${2:-none} == none ]] && net=(--network none) # else podman's default bridge (netavark)
    pod_yaml "$1" >"$y"
    t0=$(now_ms)
    pn kube play "${net[@]}" "$y" >"$D/podman/last.log" 2>&1 ||
        { cat "$D/podman/last.log" >&2; die "podman kube play $1 failed (its output above)"; }
    t1=$(now_ms)
    [[ $(pn pod inspect "$1" --format '{{.State}}' 2>/dev/null) == Running ]] ||
        { pn pod inspect "$1" >&2 || true; die "podman pod $1 not Running after kube play"; }
    pn kube down "$y" >/dev/null 2>&1 || true
    pn pod rm -f "$1" >/dev/null 2>&1 || true
    elapsed "$t0" "$t1"
}
podman_play bench-podman-warmup >/dev/null # builds podman's pause image, not counted
podman_play bench-podman-net-warmup bridge >/dev/null # creates podman0 and its rules, not counted
podman_net_ip=$(pn network inspect podman --format '{{range .Subnets}}{{.Subnet}}{{end}}' 2>/dev/null || true)

# ---- 3. runc run -d ------------------------------------------------------------------------
echo "runc: unpacking the image, warm-up, then $RUNC_RUNS runs..."
B=$D/runc-bundle
umoci unpack --image "$D/img:latest" "$B" >/dev/null
rm -f "$B/config.json"
(cd "$B" && runc spec)
jq '.process.terminal = false | .process.args = ["sleep", "3600"]' "$B/config.json" >"$B/c.json"
mv "$B/c.json" "$B/config.json" # keeps `runc spec`'s new network namespace per container
runc_run() { # id -> prints elapsed ms
    local t0 t1
    t0=$(now_ms)
    nsenter --net="/run/netns/$NS" runc --root "$D/runc-state" run -d --bundle "$B" "$1" \
        </dev/null >/dev/null 2>"$D/runc.err" || { cat "$D/runc.err" >&2; die "runc run failed (its output above)"; }
    t1=$(now_ms)
    runc --root "$D/runc-state" delete -f "$1" >/dev/null 2>&1 || true
    elapsed "$t0" "$t1"
}
runc_run bench-runc-warmup >/dev/null

# ---- 1-3. single starts, interleaved -------------------------------------------------------
# Round-robin skiff / podman / runc so that background load hits all three alike. Before each
# timed start, `sync` and a short pause, so no run pays for the previous one's writeback (skiff
# fsyncs state files, and an ext4 fsync waits for whatever else is in the journal transaction).
settle() { sync; sleep 0.2; }
echo "single starts, interleaved: skiff x$SINGLE_RUNS, podman x$PODMAN_RUNS, runc x$RUNC_RUNS..."
"$DRIVER" single "$SOCK" "$D/manifests" 1 >/dev/null # warm-up, not counted
skiff_ms= skiff_vis= podman_ms= podman_net_ms= runc_ms=
load_before=$(cut -d' ' -f1 /proc/loadavg)
max=$SINGLE_RUNS
((PODMAN_RUNS > max)) && max=$PODMAN_RUNS
((PODMAN_NET_RUNS > max)) && max=$PODMAN_NET_RUNS
((RUNC_RUNS > max)) && max=$RUNC_RUNS
for i in $(seq "$max"); do
    if ((i <= SINGLE_RUNS)); then
        settle
        one=$("$DRIVER" single "$SOCK" "$D/manifests" 1)
        skiff_ms+=" $(awk '$1 == "single_running_ms" { print $2 }' <<<"$one")"
        skiff_vis+=" $(awk '$1 == "single_visible_ms" { print $2 }' <<<"$one")"
    fi
    ((i <= PODMAN_RUNS)) && settle && podman_ms+=" $(podman_play "bench-podman-$i")"
    ((i <= PODMAN_NET_RUNS)) && settle && podman_net_ms+=" $(podman_play "bench-podman-net-$i" bridge)"
    ((i <= RUNC_RUNS)) && settle && runc_ms+=" $(runc_run "bench-runc-$i")"
done
s_skiff=$(stats "$skiff_ms")
s_vis=$(stats "$skiff_vis")
s_podman=$(stats "$podman_ms")
s_podman_net=$(stats "$podman_net_ms")
s_runc=$(stats "$runc_ms")

# ---- 4. skiff, BURST pods at once, then memory ---------------------------------------------
echo "skiff: $BURST pods at once..."
settle
burst=$("$DRIVER" burst "$SOCK" "$D/manifests" "$D/staging" "$BURST")
b_run=$(grep '^burst_running_ms ' <<<"$burst" | cut -d' ' -f2-)
b_all=$(tr ' ' '\n' <<<"$b_run" | sort -g | tail -1)
b_first=$(tr ' ' '\n' <<<"$b_run" | sort -g | head -1)
b_med=$(field "$(stats "$b_run")" 1)
sleep 1 # let allocations from the burst settle before reading RSS
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
pss() { awk '$1 == "Pss:" { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
[[ $(cat "/proc/$SKIFFD_PID/comm") == skiffd ]] || die "pid $SKIFFD_PID is not skiffd"
d_rss=$(kb "$SKIFFD_PID" VmRSS)
d_anon=$(kb "$SKIFFD_PID" RssAnon)
shims=$(pgrep -f "skiff-shim(-mon supervise| start| finish) .*$D" || true)
nshims=$(wc -w <<<"$shims")
shim_rss= shim_anon= shim_pss=
for p in $shims; do
    shim_rss+=" $(kb "$p" VmRSS)" shim_anon+=" $(kb "$p" RssAnon)" shim_pss+=" $(pss "$p")"
done
agg() { tr ' ' '\n' <<<"$1" | grep . | awk '{ s += $1; if ($1 > m) m = $1 } END { if (NR) printf "%.2f %.2f\n", m / 1024, s / NR / 1024; else print "nan nan" }'; }
a_rss=$(agg "$shim_rss") a_anon=$(agg "$shim_anon") a_pss=$(agg "$shim_pss")
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "skiff: removing all pods and stopping skiffd..."
t0=$(now_ms)
stop_skiffd
t1=$(now_ms)
check_skiff_leftovers
cp "$D/skiffd.log" target/bench/skiffd.log

# ---- report --------------------------------------------------------------------------------
ok() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { r = (op == "<" ? a < b : a >= b); print (r ? "ok" : "MISSED") }'; }
r_ps=$(ratio "$(field "$s_podman" 1)" "$(field "$s_skiff" 1)")
r_pns=$(ratio "$(field "$s_podman_net" 1)" "$(field "$s_skiff" 1)")
r_sr=$(ratio "$(field "$s_skiff" 1)" "$(field "$s_runc" 1)")
b_s=$(awk -v m="$b_all" 'BEGIN { printf "%.2f", m / 1000 }')
shim_max=$(field "$a_rss" 1)
echo
echo "pod start (manifest -> Running), same image, same run, interleaved ($(nproc) CPUs, 1-min load $load_before -> $(cut -d' ' -f1 /proc/loadavg))"
printf '  %-20s median %7.1f ms  p90 %7.1f ms  min %7.1f ms  (%s runs, with its CNI network)\n' \
    "skiff  single pod" $s_skiff "$SINGLE_RUNS"
printf '  %-20s median %7.1f ms  p90 %7.1f ms  min %7.1f ms  (manifest -> pod listed by the API)\n' \
    "  of which listing" $s_vis
printf '  %-20s median %7.1f ms  p90 %7.1f ms  min %7.1f ms  (%s runs, --network none)\n' \
    "podman kube play" $s_podman "$PODMAN_RUNS"
printf '  %-20s median %7.1f ms  p90 %7.1f ms  min %7.1f ms  (%s runs, netavark bridge %s)\n' \
    "podman kube play" $s_podman_net "$PODMAN_NET_RUNS" "${podman_net_ip:-?}"
printf '  %-20s median %7.1f ms  p90 %7.1f ms  min %7.1f ms  (%s runs)\n' \
    "runc run -d" $s_runc "$RUNC_RUNS"
echo "  ratio podman/skiff  ${r_ps}x  (podman without a network; target >= 5x: $(ok "$r_ps" '>=' 5))"
echo "  ratio podman+net/skiff  ${r_pns}x  (both with a network; target >= 4x: $(ok "$r_pns" '>=' 4))"
echo "  ratio skiff/runc    ${r_sr}x  (skiff's cost over a bare runtime start)"
echo "  skiff $BURST pods at once: all Running in $b_s s (target < 3 s: $(ok "$b_s" '<' 3));" \
    "first $(printf %.0f "$b_first") ms, median $(printf %.0f "$b_med") ms"
echo "  skiffd RSS with $nshims pods: $(mib "$d_rss") MiB (target < 30 MiB: $(ok "$(mib "$d_rss")" '<' 30)); anon $(mib "$d_anon") MiB"
echo "  shim RSS max $shim_max MiB mean $(field "$a_rss" 2) MiB (target < 2 MiB each: $(ok "$shim_max" '<' 2))"
echo "    of which private anon: max $(field "$a_anon" 1) MiB mean $(field "$a_anon" 2) MiB; PSS max $(field "$a_pss" 1) MiB mean $(field "$a_pss" 2) MiB"
echo "  teardown of $BURST pods + skiffd stop: $(elapsed "$t0" "$t1") ms"
[[ $(host_net_files) == "$HOST_NET_BEFORE" ]] ||
    echo "  !!! /etc/cni/net.d, /etc/containers/networks or /var/lib/cni changed during the run"
if ((LEFTOVERS)); then
    echo "  !!! skiff left processes or mounts behind (see above)"
else
    echo "  no skiff-shim(-mon) process, mount or pod IP allocation left under $D"
fi
echo "raw ms: skiff$skiff_ms"
echo "raw ms: podman$podman_ms"
echo "raw ms: podman+net$podman_net_ms"
echo "raw ms: runc$runc_ms"
echo "(also in $OUT; skiffd log in target/bench/skiffd.log)"
bench_result "single pod start, manifest -> Running (median ms)" "$(field "$s_skiff" 1)" \
    "$(field "$s_podman" 1) (podman kube play)" "${r_ps}x" "podman/skiff >= 5x" "$(met "$r_ps" '>=' 5)"
bench_result "single pod start with a network (median ms)" "$(field "$s_skiff" 1)" \
    "$(field "$s_podman_net" 1) (podman + netavark)" "${r_pns}x" "podman/skiff >= 4x" "$(met "$r_pns" '>=' 4)"
bench_result "pod start vs a bare runtime start (median ms)" "$(field "$s_skiff" 1)" \
    "$(field "$s_runc" 1) (runc run -d)" "${r_sr}x" "-" "-"
bench_result "$BURST pods at once, all Running (s)" "$b_s" "-" "-" "< 3 s" "$(met "$b_s" '<' 3)"
bench_result "skiffd RSS with $nshims pods (MiB)" "$(mib "$d_rss")" "-" "-" "< 30 MiB" "$(met "$(mib "$d_rss")" '<' 30)"
bench_result "shim RSS, largest (MiB)" "$shim_max" "-" "-" "< 2 MiB" "$(met "$shim_max" '<' 2)"
