#!/usr/bin/env bash
# Workload controllers benchmark (issue 11): skiffd's Deployment controller next to the same
# pods made without it, with the real kubectl over skiffd's TLS API, all in one run:
#   1. a Deployment of REPLICAS busybox replicas (`sleep 3600`, terminationGracePeriodSeconds 1,
#      imagePullPolicy Never): `kubectl apply` -> `status.availableReplicas` = REPLICAS; next to
#      the peer, the same REPLICAS pods as static pods (one multi-document file renamed into the
#      manifest directory) -> all Running and Ready, and, to tell the API's share from the
#      controller's, the same pods as Pods by one `kubectl apply` -> all Running and Ready.
#      Goal: Deployment / static pods <= 1.5x.
#   2. a rolling update of those REPLICAS replicas (`kubectl set image` to a second tag of the
#      same image, default strategy: maxSurge 25 %, maxUnavailable 25 %) -> `kubectl rollout
#      status` returns; as seconds and replaced pods a second.
#   3. HPA reaction: a Deployment of 1 CPU-burning replica (requests 100m, limits 200m), once it
#      is Available `kubectl autoscale --cpu-percent=50 --min=1 --max=3` -> the Deployment's
#      `spec.replicas` > 1. skiffd samples usage every `--metric-resolution 2s` (the tests'
#      value; the default is 10s), so the goal is one HPA sync period (15 s) plus one metrics
#      resolution: 17 s. A new HPA is synced at once; when its first pass finds no usable sample
#      yet (a pod needs two readings, the second a whole window after it became Ready, as on
#      Kubernetes) the next pass is a sync period later.
# Rounds alternate deployment / static / API pods, so load drifts hit all alike; the figures are
# the medians over RUNS rounds (HPA_RUNS for 3). Each one is timed from just before the command
# (or the rename) until the condition is seen by polling skiffd's API socket every 0.1 s, so
# kubectl's own start (about 0.1-0.3 s) is inside the Deployment and API figures, not the static
# one. Between measures everything is deleted and gone before the next starts.
#
# Usage: sudo scripts/bench-workloads.sh   (from the repository root)
#
# skiffd runs in a throwaway network namespace on temp dirs; an EXIT trap deletes every object,
# waits for the pods to go, stops skiffd and removes the namespace and the dirs, also on failure
# or Ctrl-C, and reports any process, mount or pod IP skiff left. Output goes to the terminal
# and to target/bench/workloads.txt. kubectl is not a Debian package: it must be on PATH (or the
# Cloud SDK's /usr/lib/google-cloud-sdk/bin/kubectl.1.33, which the tests use too).
#
# Knobs (environment): REPLICAS=100 RUNS=3 HPA_RUNS=3 METRIC_RESOLUTION=2s SKIFF_LOG_LEVEL=info
#   PROFILE=release|debug (figures only mean something on release)
set -euo pipefail

die() { echo "bench-workloads: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
[[ -f Cargo.toml && -f scripts/build-test-image.sh ]] || die "run from the repository root"

REPLICAS=${REPLICAS:-100}
RUNS=${RUNS:-3}
HPA_RUNS=${HPA_RUNS:-3}
METRIC_RESOLUTION=${METRIC_RESOLUTION:-2s}
SKIFF_LOG_LEVEL=${SKIFF_LOG_LEVEL:-info}
IMAGE=skiff.test/busybox:latest
IMAGE2=skiff.test/busybox:v2 # the same content under a second tag: the rolling update's target
GOAL_RATIO=1.5
HPA_SYNC=15
# How long any one condition may take before the run counts as failed (s).
TIMEOUT=${TIMEOUT:-300}

mkdir -p target/bench
OUT=target/bench/workloads.txt
exec > >(tee "$OUT") 2>&1

# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_require curl jq util-linux iproute2 busybox-static
bench_profile

KUBECTL=/usr/lib/google-cloud-sdk/bin/kubectl.1.33
[[ -x $KUBECTL ]] || KUBECTL=$(command -v kubectl || true)
[[ -n $KUBECTL ]] ||
    die "kubectl not found (not a Debian package: https://kubernetes.io/docs/tasks/tools/)"

echo "building ($PROFILE)..."
cargo build "${CARGO_PROFILE[@]}" --bins -p skiff -p cni -q
for b in skiffd skiff skiff-shim skiff-shim-mon skiff-bridge skiff-host-local skiff-portmap; do
    [[ -x $BIN/$b ]] || die "$BIN/$b did not build"
done

# ---- sandbox and cleanup -------------------------------------------------------------------
D=$(mktemp -d /tmp/skiff-wlbench.XXXXXX)
NS=skiff-wl-$RANDOM$RANDOM
SOCK=$D/run/skiff.sock
SKIFFD_PID=
export SKIFF_SOCKET=$SOCK

# kc ARGS...: the real kubectl against skiffd's TLS API (127.0.0.1:6443 inside the namespace),
# with its discovery cache under $D.
kc() { nsenter --net="/run/netns/$NS" env HOME="$D" "$KUBECTL" --kubeconfig "$D/kubeconfig" "$@"; }
# api PATH: one GET over skiffd's unix socket (no token there), the body on stdout.
api() { curl -sf --max-time 10 --unix-socket "$SOCK" "http://skiff$1"; }
# now: wall clock in seconds with microseconds, without forking.
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# until_true WHAT CMD...: polls CMD every 0.1 s until it succeeds; dies after $TIMEOUT s.
until_true() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || {
            tail -n 30 "$D/skiffd.log" >&2
            die "timed out after $TIMEOUT s waiting for $what (skiffd's log above)"
        }
        sleep 0.1
    done
}

# count_pods SELECTOR [ready]: pods matching SELECTOR (all of them, terminating ones too), or
# only those Running, not being deleted, with Ready True.
count_pods() {
    api "/api/v1/namespaces/default/pods?labelSelector=$1" | jq --arg only "${2:-}" '
        [.items[] | select($only == "" or (.status.phase == "Running"
            and .metadata.deletionTimestamp == null
            and any(.status.conditions[]?; .type == "Ready" and .status == "True")))] | length'
}
pods_ready() { [[ $(count_pods "$1" ready) == "$2" ]]; }
pods_gone() { [[ $(count_pods "$1") == 0 ]]; }
# deployment_done NAME N IMAGE: as `kubectl rollout status` sees a finished rollout, and every
# available replica from the template with IMAGE.
deployment() { api "/apis/apps/v1/namespaces/default/deployments/$1"; }
deployment_available() {
    deployment "$1" | jq -e --argjson n "$2" --arg img "$3" '
        .status.observedGeneration >= .metadata.generation
        and .spec.template.spec.containers[0].image == $img
        and .status.updatedReplicas == $n and .status.replicas == $n
        and .status.availableReplicas == $n' >/dev/null
}
deployment_scaled_up() { deployment "$1" | jq -e '.spec.replicas > 1' >/dev/null; }
# Nothing of a Deployment left: the object, its ReplicaSets and its pods.
deployment_gone() {
    ! deployment "$1" >/dev/null &&
        [[ $(api "/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3D$1" |
            jq '.items | length') == 0 ]] && pods_gone "app%3D$1"
}

stop_skiffd() {
    [[ -n $SKIFFD_PID ]] || return 0
    if kill -0 "$SKIFFD_PID" 2>/dev/null; then
        # Delete what the API made, remove the manifests, then wait for every pod to go.
        if [[ -f $D/kubeconfig ]]; then
            kc delete hpa,deployments,replicasets,pods --all --wait=false >/dev/null 2>&1
        fi
        rm -f "$D"/manifests/*.yaml
        local deadline=$((SECONDS + 120))
        until [[ $(api /api/v1/pods | jq '.items | length') == 0 ]]; do
            if ((SECONDS >= deadline)); then
                echo "!!! skiff: pods still listed 120 s after everything was deleted"
                break
            fi
            sleep 0.2
        done
        kill -TERM "$SKIFFD_PID"
        for _ in $(seq 100); do kill -0 "$SKIFFD_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SKIFFD_PID" 2>/dev/null; then
            echo "!!! skiff: skiffd still alive 10 s after SIGTERM; killing it"
            kill -KILL "$SKIFFD_PID"
        fi
    fi
    wait "$SKIFFD_PID" 2>/dev/null
    SKIFFD_PID=
}

cleanup() {
    local rc=$? pids ips
    set +e
    stop_skiffd
    # Anything skiff leaves after all its pods are gone and skiffd stopped is a skiff bug.
    pids=$(pgrep -f "skiff-shim(-mon supervise| start| finish) .*$D")
    if [[ -n $pids ]]; then
        echo "!!! SKIFF BUG: skiff-shim processes left after all pods were removed:" $pids
        kill -KILL $pids
    fi
    ips=$(ls "$D/root/cni/networks/skiff" 2>/dev/null | grep '^[0-9]')
    [[ -z $ips ]] || echo "!!! SKIFF BUG: pod IPs still allocated after all pods were removed:" $ips
    awk -v p="$D" '{ m = $5; gsub(/\\040/, " ", m); if (index(m, p) == 1) print m }' \
        /proc/self/mountinfo | sort -r |
        while read -r m; do echo "!!! SKIFF BUG: mount left: $m"; umount -l "$m"; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$D"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- skiffd and the manifests --------------------------------------------------------------
echo "work dir $D, netns $NS"
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$D/manifests" "$D/staging"
scripts/build-test-image.sh "$D/img" "$IMAGE" >/dev/null
scripts/build-test-image.sh "$D/img2" "$IMAGE2" >/dev/null
# Image GC off: it goes by the whole filesystem's use and could remove the test images between
# rounds on a nearly full build machine (the tests run skiffd so too).
nsenter --net="/run/netns/$NS" "$BIN/skiffd" --pod-manifest-path "$D/manifests" \
    --root-dir "$D/root" --run-dir "$D/run" --node-name wlbench --cni-conf-dir "$D/net.d" \
    --metric-resolution "$METRIC_RESOLUTION" --image-gc-high-threshold 100 \
    --log-level "$SKIFF_LOG_LEVEL" >"$D/skiffd.log" 2>&1 &
SKIFFD_PID=$!
for _ in $(seq 200); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { cat "$D/skiffd.log"; die "skiffd did not create $SOCK"; }
"$BIN/skiff" image import "$D/img" >/dev/null
"$BIN/skiff" image import "$D/img2" >/dev/null
for _ in $(seq 200); do [[ -f $D/root/pki/admin.kubeconfig ]] && break; sleep 0.05; done
"$BIN/skiff" kubeconfig --root-dir "$D/root" >"$D/kubeconfig"
chmod 600 "$D/kubeconfig"

# pod_spec INDENT COMMAND: the pod spec every measure uses (COMMAND a YAML flow sequence).
pod_spec() {
    sed "s/^/$1/" <<EOF
terminationGracePeriodSeconds: 1
containers:
- name: main
  image: $IMAGE
  imagePullPolicy: Never
  command: $2
EOF
}
deployment_yaml() { # NAME REPLICAS COMMAND [RESOURCES]
    cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
  labels: {app: $1}
spec:
  replicas: $2
  selector:
    matchLabels: {app: $1}
  template:
    metadata:
      labels: {app: $1}
    spec:
$(pod_spec '      ' "$3")
EOF
    [[ -z ${4:-} ]] || echo "        resources: $4"
}
pods_yaml() { # LABEL COUNT: COUNT Pods named LABEL-I, in one multi-document file
    local i
    for ((i = 0; i < $2; i++)); do
        cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $1-$i
  labels: {app: $1}
spec:
$(pod_spec '  ' '[sleep, "3600"]')
EOF
    done
}
deployment_yaml web "$REPLICAS" '[sleep, "3600"]' >"$D/web.yaml"
pods_yaml static "$REPLICAS" >"$D/staging/static.yaml"
pods_yaml apipod "$REPLICAS" >"$D/apipods.yaml"
deployment_yaml burn 1 "[sh, -c, 'while :; do :; done']" \
    '{requests: {cpu: 100m}, limits: {cpu: 200m}}' >"$D/burn.yaml"

# kubectl's discovery and OpenAPI caches warm, and every manifest valid, before any timing.
until_true "the API to answer kubectl" kc get deployments -o name >/dev/null 2>&1
for f in web.yaml apipods.yaml burn.yaml staging/static.yaml; do
    kc apply --dry-run=server -f "$D/$f" >/dev/null || die "kubectl apply --dry-run=server of $f failed"
done

# ---- 1 and 2: the Deployment, its rolling update, the static and API pods -------------------
settle() { sync; sleep 0.5; }
dep_s= roll_s= static_s= apipod_s=
load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "$REPLICAS replicas: deployment apply -> Available, rolling update, static pods, API pods; $RUNS rounds"
for i in $(seq "$RUNS"); do
    settle
    t0=$(now)
    kc apply -f "$D/web.yaml" >/dev/null
    until_true "deployment web Available" deployment_available web "$REPLICAS" "$IMAGE"
    t1=$(now)
    dep=$(elapsed "$t0" "$t1")

    settle
    t0=$(now)
    kc set image deployment/web "main=$IMAGE2" >/dev/null
    kc rollout status deployment/web --timeout="${TIMEOUT}s" >/dev/null
    t1=$(now)
    roll=$(elapsed "$t0" "$t1")
    deployment_available web "$REPLICAS" "$IMAGE2" ||
        die "rollout status returned but deployment web is not all Available on $IMAGE2"
    kc delete deployment web >/dev/null
    until_true "deployment web, its ReplicaSets and pods gone" deployment_gone web

    settle
    t0=$(now)
    mv "$D/staging/static.yaml" "$D/manifests/static.yaml"
    until_true "$REPLICAS static pods Ready" pods_ready "app%3Dstatic" "$REPLICAS"
    t1=$(now)
    static=$(elapsed "$t0" "$t1")
    mv "$D/manifests/static.yaml" "$D/staging/static.yaml"
    until_true "the static pods gone" pods_gone "app%3Dstatic"

    settle
    t0=$(now)
    kc apply -f "$D/apipods.yaml" >/dev/null
    until_true "$REPLICAS API pods Ready" pods_ready "app%3Dapipod" "$REPLICAS"
    t1=$(now)
    apipod=$(elapsed "$t0" "$t1")
    kc delete -f "$D/apipods.yaml" --wait=false >/dev/null
    until_true "the API pods gone" pods_gone "app%3Dapipod"

    dep_s+=" $dep" roll_s+=" $roll" static_s+=" $static" apipod_s+=" $apipod"
    echo "  run $i: deployment $dep s, rolling update $roll s, static pods $static s, API pods $apipod s"
done

# ---- 3: HPA ----------------------------------------------------------------------------------
hpa_s= hpa_apply_s=
echo "HPA: 1 CPU-burning replica, autoscale --cpu-percent=50 --max=3 -> spec.replicas > 1; $HPA_RUNS runs (--metric-resolution $METRIC_RESOLUTION)"
for i in $(seq "$HPA_RUNS"); do
    settle
    ta=$(now)
    kc apply -f "$D/burn.yaml" >/dev/null
    kc rollout status deployment/burn --timeout="${TIMEOUT}s" >/dev/null
    t0=$(now)
    kc autoscale deployment burn --min=1 --max=3 --cpu-percent=50 >/dev/null
    until_true "the HPA to scale deployment burn up" deployment_scaled_up burn
    t1=$(now)
    hpa=$(elapsed "$t0" "$t1") from_apply=$(elapsed "$ta" "$t1")
    # Why it took what it took: the HPA's events (a first pass without usable metrics, then
    # the rescale) in order.
    uid=$(api /apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/burn | jq -r .metadata.uid)
    events=$(api "/api/v1/namespaces/default/events?fieldSelector=involvedObject.uid%3D$uid" |
        jq -r '[.items[] | "\(.reason) x\(.count // 1)"] | join(", ")')
    to=$(deployment burn | jq '.spec.replicas')
    kc delete hpa burn >/dev/null
    kc delete deployment burn >/dev/null
    until_true "deployment burn gone" deployment_gone burn
    hpa_s+=" $hpa" hpa_apply_s+=" $from_apply"
    echo "  run $i: autoscale -> $to replicas in $hpa s (apply -> scale-up $from_apply s; HPA events: ${events:-none})"
done

# ---- report ---------------------------------------------------------------------------------
m_dep=$(median "$dep_s") m_static=$(median "$static_s") m_api=$(median "$apipod_s")
m_roll=$(median "$roll_s") m_hpa=$(median "$hpa_s") m_hpa_apply=$(median "$hpa_apply_s")
r=$(ratio "$m_dep" "$m_static") r_api=$(ratio "$m_dep" "$m_api")
roll_rate=$(awk -v n="$REPLICAS" -v s="$m_roll" 'BEGIN { printf "%.1f", (s > 0) ? n / s : 0 }')
hpa_goal=$(awk -v p="$HPA_SYNC" -v r="${METRIC_RESOLUTION%s}" 'BEGIN { print p + r }')
ok_dep=$(met "$r" '<=' "$GOAL_RATIO") ok_hpa=$(met "$m_hpa" '<=' "$hpa_goal")
echo
echo "workloads ($(nproc) CPUs, $PROFILE build, 1-min load $load_before -> $(cut -d' ' -f1 /proc/loadavg); medians)"
printf '  %-46s %7s s\n' "Deployment of $REPLICAS, apply -> all Available" "$m_dep"
printf '  %-46s %7s s   ratio deployment/static %sx (goal <= %sx: %s)\n' \
    "$REPLICAS static pods, file -> all Running+Ready" "$m_static" "$r" "$GOAL_RATIO" "$ok_dep"
printf '  %-46s %7s s   ratio deployment/API pods %sx\n' \
    "$REPLICAS Pods by kubectl apply -> all Ready" "$m_api" "$r_api"
printf '  %-46s %7s s   %s pods/s\n' "rolling update of $REPLICAS -> rollout status" "$m_roll" "$roll_rate"
printf '  %-46s %7s s   (goal <= %s s, one sync period + one resolution: %s)\n' \
    "HPA, autoscale -> spec.replicas > 1" "$m_hpa" "$hpa_goal" "$ok_hpa"
printf '  %-46s %7s s\n' "HPA, apply of the burning pod -> scale-up" "$m_hpa_apply"
echo "raw s: deployment$dep_s"
echo "raw s: static$static_s"
echo "raw s: api-pods$apipod_s"
echo "raw s: rolling-update$roll_s"
echo "raw s: hpa$hpa_s"
cp "$D/skiffd.log" target/bench/workloads-skiffd.log
echo "(also in $OUT; skiffd log in target/bench/workloads-skiffd.log)"
bench_result "Deployment of $REPLICAS, apply -> all Available (median s)" "$m_dep" \
    "$m_static (static pods); $m_api (Pods by kubectl apply)" "${r}x" "deployment/static <= ${GOAL_RATIO}x" "$ok_dep"
bench_result "rolling update of $REPLICAS replicas -> rollout status (median s)" \
    "$m_roll ($roll_rate pods/s)" "-" "-" "-" "-"
bench_result "HPA, autoscale -> scale-up, --metric-resolution $METRIC_RESOLUTION (median s)" "$m_hpa" \
    "-" "-" "<= $hpa_goal s" "$ok_hpa"
