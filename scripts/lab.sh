#!/usr/bin/env bash
# Multi-host overlay lab (issue #6): N skiff "hosts" on this one machine, each a network
# namespace with its own skiffd, joined by an underlay bridge that lives in a network namespace of
# its own, with one etcd on that underlay. Nothing touches the real host network.
#
# Usage: sudo scripts/lab.sh COMMAND [--name NAME] [options]
#   up N [--ttl S] [--cluster-cidr CIDR] [--bin DIR] [--image DIR] [--flags "..."] [--no-overlay] [--demo] [--direct-routing] [--etcd-auth]
#       builds hosts h1..hN, starts etcd, then every skiffd at the same time, imports the test
#       image into each and prints how to reach them. --ttl is skiffd's --subnet-lease-ttl
#       (default 60); --flags are extra skiffd flags for every host (e.g. --vxlan-tx-checksum-off);
#       --no-overlay runs the skiffds without etcd (independent single nodes, to debug the lab);
#       --demo puts the demo manifests on the hosts (as `demo` below); --direct-routing writes
#       the network config with the vxlan backend's DirectRouting on (hosts share one L2
#       underlay, so peers get plain routes instead of VXLAN). --etcd-auth turns etcd's password
#       auth on (user root, a random password in /var/lib/skiff-lab/NAME/etcd-password, 0600)
#       and starts every skiffd with --etcd-username root --etcd-password-file on it.
#   down                  stops the pods, every skiffd and etcd, removes every netns and directory
#                         of the lab; idempotent. Leftovers skiff should have removed are reported
#                         as BUG (and removed); the exit status is then 1.
#   status                hosts, their skiffd, underlay IP, leased subnet and pods
#   env [HOST]            how to reach each host; `eval "$(scripts/lab.sh env h2)"` sets SKIFF_SOCKET
#   exec HOST CMD...      runs CMD in HOST's network namespace, SKIFF_SOCKET set, skiff on PATH
#                         (options of lab.sh, like --name, go before HOST)
#   apply HOST FILE...    copies manifests into HOST's manifest directory (atomically)
#   demo                  examples/lab/: web.yaml and client.yaml on every host, service.yaml on h1
#   add [--no-start] [--no-wait]   adds the next host (hN+1) and starts its skiffd
#   remove HOST           unplugs HOST from the underlay (as a host that dies: its lease then
#                         expires after the TTL), stops its pods and skiffd and deletes it
#   start HOST [--no-wait] | stop HOST | restart HOST
#                         one host's skiffd (SIGTERM; its pods keep running across a restart)
#   etcd stop|start       stops or starts the lab's etcd (its data is kept)
#
# NAME defaults to skiff-lab (tests use random names). Layout, for NAME and host hI:
#   netns NAME-underlay   bridge br0 10.77.0.1/24, etcd on http://10.77.0.1:2379, port hI per host
#   netns NAME-hI         eth0 10.77.0.(10+I)/24, default route via 10.77.0.1; skiffd's node
#                         name is NAME-hI, its VTEP skiff.1, its pods' netns pinned in its run dir
#   /var/lib/skiff-lab/NAME/hI/{manifests,root,net.d,skiffd.log}, /var/lib/skiff-lab/NAME/etcd*
#   /run/skiff-lab/NAME/hI/{run/skiff.sock,skiffd.pid,started}, /run/skiff-lab/NAME/lab.env
# skiffds run under `nsenter --net` (not `ip netns exec`, whose private mount namespace would
# hide the daemon's mounts) and `setsid`, so they outlive this script and Ctrl-C in its terminal.
# Binaries: --bin DIR or $SKIFF_BIN, else the newer of target/debug and target/release.
# Image: --image DIR (an OCI layout), default target/test-image (built by build-test-image.sh).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -t 2 ]]; then bold=$'\e[1m' red=$'\e[1;31m' off=$'\e[0m'; else bold= red= off=; fi
say() { printf '%s==> %s%s\n' "$bold" "$*" "$off" >&2; }
loud() { printf '%s!!! %s%s\n' "$red" "$*" "$off" >&2; }
die() { loud "lab: $*"; exit 1; }

UNDERLAY_NET=10.77.0
ETCD_IP=$UNDERLAY_NET.1
ETCD_URL=http://$ETCD_IP:2379
ETCD_PREFIX=/skiff

# ---- arguments -----------------------------------------------------------------------------
(($#)) || { usage >&2; exit 2; }
[[ $1 == -h || $1 == --help || $1 == help ]] && { usage; exit 0; }
cmd=$1
shift
name=skiff-lab
ttl=60 cidr=10.244.0.0/16 bin=${SKIFF_BIN:-} image= flags= overlay=1 demo=0 wait=1 start=1 direct=0 auth=0
args=()
while (($#)); do
    case $1 in
        --name) name=${2:?--name needs a value}; shift ;;
        --ttl) ttl=${2:?--ttl needs seconds}; shift ;;
        --cluster-cidr) cidr=${2:?--cluster-cidr needs a CIDR}; shift ;;
        --bin) bin=${2:?--bin needs a directory}; shift ;;
        --image) image=${2:?--image needs a directory}; shift ;;
        --flags) flags=${2?--flags needs a value}; shift ;;
        --no-overlay) overlay=0 ;;
        --demo) demo=1 ;;
        --direct-routing) direct=1 ;;
        --etcd-auth) auth=1 ;;
        --no-wait) wait=0 ;;
        --no-start) start=0 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *)
            args+=("$1")
            # exec HOST CMD...: everything after HOST is the command, options included.
            if [[ $cmd == exec ]]; then shift; args+=("$@"); break; fi
            ;;
    esac
    shift
done
[[ $name =~ ^[a-z0-9][a-z0-9-]{0,23}$ ]] || die "--name: lower-case letters, digits and '-', at most 24 characters"
[[ $ttl =~ ^[0-9]+$ ]] || die "--ttl: a number of seconds"

((EUID == 0)) || die "the lab creates network namespaces and runs skiffd: run it as root (sudo $0 $cmd ...)"

RUN=/run/skiff-lab/$name
STATE=/var/lib/skiff-lab/$name
UNDERLAY=$name-underlay
STATE_FILE=$RUN/lab.env

host_ns() { echo "$name-$1"; }
host_index() { [[ $1 =~ ^h([0-9]+)$ ]] || die "not a host name: $1 (h1, h2, ...)"; echo "${BASH_REMATCH[1]}"; }
host_ip() { echo "$UNDERLAY_NET.$((10 + $(host_index "$1")))"; }
host_sock() { echo "$RUN/$1/run/skiff.sock"; }
# The lab's hosts, from their state directories, in numeric order.
hosts() {
    local d
    for d in "$STATE"/h*/; do [[ -d $d ]] && basename "$d"; done | sort -V
}
need_host() { [[ -d $STATE/$1 ]] || die "no host $1 in lab $name (hosts: $(hosts | xargs))"; }

load_state() {
    [[ -f $STATE_FILE ]] || die "no lab named $name (start it with: $0 up N --name $name)"
    # shellcheck source=/dev/null
    source "$STATE_FILE"
}
save_state() {
    mkdir -p "$RUN"
    {
        printf 'bin=%q\nttl=%q\ncidr=%q\nimage=%q\nflags=%q\noverlay=%q\nauth=%q\n' \
            "$bin" "$ttl" "$cidr" "$image" "$flags" "$overlay" "$auth"
    } >"$STATE_FILE.tmp"
    mv "$STATE_FILE.tmp" "$STATE_FILE"
}

skiff() { "$bin/skiff" "$@"; }
on() { local h=$1; shift; SKIFF_SOCKET=$(host_sock "$h") "$bin/skiff" "$@"; }

# pid_of PIDFILE MARK: the pid in PIDFILE when that process still runs and its command line
# contains MARK (a recycled pid is not ours); nothing otherwise.
pid_of() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ -n $pid ]] && alive "$pid" || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" && echo "$pid"
    return 0
}
skiffd_pid() { pid_of "$RUN/$1/skiffd.pid" "$STATE/$1/root"; }
etcd_pid() { pid_of "$RUN/etcd.pid" "$STATE/etcd"; }

# alive PID: the process runs (a zombie child of this script, as after a failed `up`, does not).
alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# wait_gone PID SECONDS: true once PID has exited.
wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$1" || return 0
        sleep 0.1
    done
    ! alive "$1"
}

find_bin() {
    if [[ -z $bin ]]; then
        local d r=$repo/target/release/skiffd
        d=$repo/target/debug
        [[ -x $r && (! -x $d/skiffd || $r -nt $d/skiffd) ]] && d=$repo/target/release
        bin=$d
    fi
    bin=$(realpath "$bin")
    local b
    for b in skiffd skiff skiff-shim skiff-bridge skiff-host-local; do
        [[ -x $bin/$b ]] || die "$bin/$b missing: build with \`cargo build --workspace --bins\` (or pass --bin DIR)"
    done
}

find_image() {
    if [[ -z $image ]]; then
        image=$repo/target/test-image
        [[ -f $image/index.json ]] || {
            say "building the test image into $image"
            "$repo/scripts/build-test-image.sh" "$image" >/dev/null
        }
    fi
    image=$(realpath "$image")
    [[ -f $image/index.json ]] || die "$image is not an OCI image layout (no index.json)"
}

check_tools() {
    local t missing=()
    for t in ip nsenter setsid curl jq; do command -v "$t" >/dev/null || missing+=("$t"); done
    ((overlay)) && { command -v etcd >/dev/null || missing+=("etcd (Debian package etcd-server)"); }
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (sudo scripts/install-deps.sh installs them)"
}

# ---- underlay and etcd ---------------------------------------------------------------------
make_underlay() {
    ip netns add "$UNDERLAY"
    ip -n "$UNDERLAY" link set lo up
    ip -n "$UNDERLAY" link add br0 type bridge
    ip -n "$UNDERLAY" addr add "$ETCD_IP/24" dev br0
    ip -n "$UNDERLAY" link set br0 up
}

etcd_healthy() {
    nsenter --net="/run/netns/$UNDERLAY" curl -sf -m 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'
}

# Puts KEY=VALUE into the lab's etcd through its JSON gateway.
etcd_put() {
    local body
    body=$(printf '{"key":"%s","value":"%s"}' "$(printf %s "$1" | base64 -w0)" "$(printf %s "$2" | base64 -w0)")
    nsenter --net="/run/netns/$UNDERLAY" curl -sf -m 5 -X POST "$ETCD_URL/v3/kv/put" -d "$body" >/dev/null ||
        die "writing $1 to etcd failed"
}

start_etcd() {
    [[ -n $(etcd_pid) ]] && { echo "etcd already runs (pid $(etcd_pid))" >&2; return 0; }
    mkdir -p "$STATE/etcd"
    setsid nsenter --net="/run/netns/$UNDERLAY" etcd --name "$name" --data-dir "$STATE/etcd" \
        --listen-client-urls "$ETCD_URL,http://127.0.0.1:2379" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster "$name=http://127.0.0.1:2380" \
        </dev/null >>"$STATE/etcd.log" 2>&1 &
    echo $! >"$RUN/etcd.pid"
    local i
    for ((i = 0; i < 200; i++)); do
        etcd_healthy && { echo "etcd runs on $ETCD_URL (pid $(etcd_pid))" >&2; return 0; }
        [[ -n $(etcd_pid) ]] || break
        sleep 0.1
    done
    tail -n 20 "$STATE/etcd.log" >&2
    die "etcd did not become healthy on $ETCD_URL (log: $STATE/etcd.log)"
}

# etcd_call PATH JSON [TOKEN]: one request to the lab's etcd gateway; its answer on stdout.
etcd_call() {
    local h=()
    [[ -n ${3:-} ]] && h=(-H "Authorization: $3")
    nsenter --net="/run/netns/$UNDERLAY" curl -sf -m 5 -X POST "${h[@]}" "$ETCD_URL$1" -d "$2"
}

# Turns etcd's password auth on: user root (role root) with a random password kept 0600 in
# $STATE/etcd-password, what `etcdctl user add root; etcdctl auth enable` do.
enable_etcd_auth() {
    local pw
    pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    (umask 077 && printf '%s\n' "$pw" >"$STATE/etcd-password")
    etcd_call /v3/auth/user/add "{\"name\":\"root\",\"password\":\"$pw\"}" >/dev/null &&
        etcd_call /v3/auth/role/add '{"name":"root"}' >/dev/null &&
        etcd_call /v3/auth/user/grant '{"user":"root","role":"root"}' >/dev/null &&
        etcd_call /v3/auth/enable '{}' >/dev/null ||
        die "turning etcd auth on failed"
    say "etcd auth on: user root, password in $STATE/etcd-password"
}

stop_etcd() {
    local pid
    pid=$(etcd_pid)
    [[ -n $pid ]] || return 0
    kill -TERM "$pid"
    wait_gone "$pid" 10 || { loud "etcd still runs 10 s after SIGTERM; killing it"; kill -KILL "$pid"; }
    wait_gone "$pid" 5 || true
    echo "etcd stopped" >&2
}

# ---- hosts ---------------------------------------------------------------------------------
make_host() {
    local h=$1 ns
    ns=$(host_ns "$h")
    mkdir -p "$STATE/$h/manifests" "$STATE/$h/root" "$STATE/$h/net.d" "$RUN/$h/run"
    ip netns add "$ns"
    ip -n "$UNDERLAY" link add "$h" type veth peer name eth0 netns "$ns"
    ip -n "$UNDERLAY" link set "$h" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(host_ip "$h")/24" dev eth0
    ip -n "$ns" link set eth0 up
    # skiffd's default underlay interface is the one of the default route; Services need one too.
    ip -n "$ns" route add default via "$ETCD_IP" dev eth0
}

launch_skiffd() {
    local h=$1 a
    [[ -z $(skiffd_pid "$h") ]] || { echo "$h: skiffd already runs" >&2; return 0; }
    a=(
        --pod-manifest-path "$STATE/$h/manifests" --root-dir "$STATE/$h/root" --run-dir "$RUN/$h/run"
        --node-name "$(host_ns "$h")" --cni-conf-dir "$STATE/$h/net.d"
        --file-check-frequency 5 --log-level "${SKIFF_LAB_LOG:-info,skiff=debug}"
    )
    if ((overlay)); then
        a+=(--etcd-endpoints "$ETCD_URL" --etcd-prefix "$ETCD_PREFIX" --subnet-lease-ttl "$ttl"
            --public-ip "$(host_ip "$h")" --iface eth0 --cluster-cidr "$cidr")
        ((auth)) && a+=(--etcd-username root --etcd-password-file "$STATE/etcd-password")
    fi
    # shellcheck disable=SC2206 # --flags is a list of words on purpose
    [[ -n $flags ]] && a+=($flags)
    echo "--- $(date -Is) skiffd ${a[*]}" >>"$STATE/$h/skiffd.log"
    rm -f "$(host_sock "$h")"
    date +%s.%N >"$RUN/$h/started"
    setsid nsenter --net="/run/netns/$(host_ns "$h")" "$bin/skiffd" "${a[@]}" \
        </dev/null >>"$STATE/$h/skiffd.log" 2>&1 &
    echo $! >"$RUN/$h/skiffd.pid"
}

# wait_skiffd HOST: until skiffd answers on its socket (30 s), or dies loudly.
wait_skiffd() {
    local h=$1 i pid
    pid=$(cat "$RUN/$h/skiffd.pid")
    for ((i = 0; i < 300; i++)); do
        # alive, not skiffd_pid: right after the fork the command line is still this script's.
        alive "$pid" || { tail -n 30 "$STATE/$h/skiffd.log" >&2; die "$h: skiffd exited at start (the end of its log is above)"; }
        [[ -S $(host_sock "$h") ]] && on "$h" get nodes >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 30 "$STATE/$h/skiffd.log" >&2
    die "$h: skiffd did not answer on $(host_sock "$h") within 30 s"
}

import_image() {
    on "$1" image import "$image" >/dev/null || die "$1: skiff image import $image failed"
}

# own_pods HOST EXPR: the jq EXPR of each pod bound to HOST's node; fails when skiffd does not
# answer. In a cluster every node lists the cluster's pods; only its own are its to stop (and
# to sweep).
own_pods() {
    local out
    out=$(on "$1" get pods -A -o json 2>/dev/null) || return 1
    jq -r --arg node "$(host_ns "$1")" ".items[] | select(.spec.nodeName == \$node) | $2" <<<"$out"
}

# pods_listed HOST: "namespace/name" per pod of HOST that skiffd lists; "?" when it cannot
# answer.
pods_listed() { own_pods "$1" '.metadata.namespace + "/" + .metadata.name' || echo "?"; }

pod_uids() { own_pods "$1" .metadata.uid; }

# api_delete_all HOST: deletes what was made through HOST's API, workloads first (their pods go
# with them), then pods, as `kubectl delete --all` would. In a cluster only the leader takes the
# cluster's objects; the others refuse them (403), which is fine: every host is asked.
api_delete_all() {
    local sock ns kind
    sock=$(host_sock "$1")
    for ns in $(curl -sf --unix-socket "$sock" http://skiff/api/v1/namespaces |
        jq -r '.items[].metadata.name' 2>/dev/null); do
        for kind in apis/apps/v1/namespaces/"$ns"/{deployments,daemonsets,replicasets} \
            apis/batch/v1/namespaces/"$ns"/{cronjobs,jobs} \
            api/v1/namespaces/"$ns"/{replicationcontrollers,pods}; do
            curl -s --unix-socket "$sock" -X DELETE "http://skiff/$kind" >/dev/null || true
        done
    done
}

# stop_hosts [--keep-pods] HOST...: removes the hosts' manifests and waits until their pods are
# gone (all hosts at once), then SIGTERMs their skiffds. Returns 1 when skiff misbehaved.
stop_hosts() {
    local keep=0 h pid i rc=0 left
    [[ $1 == --keep-pods ]] && { keep=1; shift; }
    local live=()
    for h in "$@"; do [[ -n $(skiffd_pid "$h") ]] && live+=("$h"); done
    ((${#live[@]})) || return 0
    if ((!keep)); then
        for h in "${live[@]}"; do
            pod_uids "$h" >>"$RUN/$h/uids" || true
            rm -f "$STATE/$h/manifests"/* "$STATE/$h/manifests"/.[!.]* 2>/dev/null || true
        done
        for h in "${live[@]}"; do
            for ((i = 0; i < 400; i++)); do
                left=$(pods_listed "$h")
                [[ -z $left ]] && break
                sleep 0.1
            done
            if [[ -n $left ]]; then
                loud "BUG: $h: 40 s after its manifests were removed skiffd still lists pods: $(xargs <<<"$left")"
                rc=1
            fi
        done
    fi
    for h in "${live[@]}"; do kill -TERM "$(skiffd_pid "$h")" 2>/dev/null || true; done
    for h in "${live[@]}"; do
        pid=$(cat "$RUN/$h/skiffd.pid")
        if ! wait_gone "$pid" 15; then
            loud "BUG: $h: skiffd still runs 15 s after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || true
            rc=1
        fi
    done
    return "$rc"
}

# sweep DIR... -- HOST...: removes what is left of pods under the DIRs (processes, mounts) and
# the cgroups of the HOSTs' pods, loudly; returns 1 when anything was found.
sweep() {
    local rc=0 p cmd root d pids=() mounts uid h i dirs=()
    while (($#)) && [[ $1 != -- ]]; do dirs+=("$1"); shift; done
    (($#)) && shift
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        root=$(readlink "/proc/$p/root" 2>/dev/null) || continue
        for d in "${dirs[@]}"; do
            if [[ $cmd == *"$d/"* || $root == "$d"/* ]]; then
                [[ $cmd == *lab.sh* ]] && continue
                loud "left over process $p: ${cmd:0:160} (root $root)"
                pids+=("$p")
                break
            fi
        done
    done
    if ((${#pids[@]})); then
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.3
        rc=1
    fi
    for d in "${dirs[@]}"; do
        mounts=$(awk -v d="$d/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
        [[ -n $mounts ]] || continue
        loud "left over mounts under $d (unmounting them):"
        printf '    %s\n' $mounts >&2
        for p in $mounts; do umount -l "$p" 2>/dev/null || true; done
        rc=1
    done
    for h in "$@"; do
        for uid in $(sort -u "$RUN/$h/uids" 2>/dev/null) $(ls "$STATE/$h/root/pods" 2>/dev/null); do
            for d in /sys/fs/cgroup/skiff/pod"$uid" /sys/fs/cgroup/*/skiff/pod"$uid"; do
                [[ -d $d ]] || continue
                loud "left over cgroup $d (removing it)"
                # The containers of a skiffd that was killed: their root is their own, so the
                # process scan above cannot tell them; their pod's cgroup can.
                mapfile -t pids < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
                if ((${#pids[@]})); then
                    loud "  killing its processes: ${pids[*]}"
                    kill -KILL "${pids[@]}" 2>/dev/null || true
                    for ((i = 0; i < 50; i++)); do
                        [[ -z $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null) ]] && break
                        sleep 0.1
                    done
                fi
                find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
                rc=1
            done
        done
    done
    return "$rc"
}

print_env() {
    local h ns subnet
    if (($# == 1)); then
        need_host "$1"
        printf 'export SKIFF_SOCKET=%s\n' "$(host_sock "$1")"
        return
    fi
    for h in $(hosts); do
        ns=$(host_ns "$h")
        subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$RUN/$h/run/subnet.env" 2>/dev/null || true)
        printf '# %s: %s, subnet %s, log %s\n' "$h" "$(host_ip "$h")" "${subnet:-?}" "$STATE/$h/skiffd.log"
        printf 'export SKIFF_SOCKET=%s\n' "$(host_sock "$h")"
        printf 'nsenter --net=/run/netns/%s sh    # a shell in the host %s\n\n' "$ns" "$h"
    done
}

apply() {
    local h=$1 f base
    shift
    need_host "$h"
    for f in "$@"; do
        [[ -f $f ]] || die "no such file: $f"
        base=$(basename "$f")
        cp "$f" "$STATE/$h/manifests/.$base.tmp"
        mv "$STATE/$h/manifests/.$base.tmp" "$STATE/$h/manifests/$base"
    done
}

put_demo() {
    local h first
    first=$(hosts | head -1)
    for h in $(hosts); do
        apply "$h" "$repo/examples/lab/web.yaml" "$repo/examples/lab/client.yaml"
    done
    apply "$first" "$repo/examples/lab/service.yaml"
    echo "demo manifests: web.yaml and client.yaml on every host, service.yaml on $first" >&2
    local opt=
    [[ $name == skiff-lab ]] || opt=" --name $name"
    echo "  watch a client: $0 exec$opt $first skiff logs -f client" >&2
}

# ---- commands ------------------------------------------------------------------------------
cmd_up() {
    local n=${args[0]:-} h i
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 200)) || die "up: how many hosts? (up N, 1 <= N <= 200)"
    [[ ! -e $STATE_FILE && ! -d $STATE && ! -e /run/netns/$UNDERLAY ]] ||
        die "lab $name exists already (scripts/lab.sh down --name $name removes it)"
    check_tools
    find_bin
    find_image
    # A failed `up` leaves nothing behind.
    trap 'rc=$?; if ((rc)); then loud "up failed; removing the lab"; cmd_down || true; fi; exit $rc' EXIT
    mkdir -p "$RUN" "$STATE"
    save_state
    say "lab $name: underlay netns $UNDERLAY (br0 $ETCD_IP/24)"
    make_underlay
    if ((overlay)); then
        start_etcd
        if ((direct)); then
            etcd_put "$ETCD_PREFIX/network/config" \
                "{\"Network\":\"$cidr\",\"Backend\":{\"Type\":\"vxlan\",\"DirectRouting\":true}}"
            say "network config: DirectRouting on"
        fi
        if ((auth)); then enable_etcd_auth; fi
    fi
    for ((i = 1; i <= n; i++)); do make_host "h$i"; done
    say "starting $n skiffd at once (lease TTL ${ttl}s, cluster CIDR $cidr)"
    for ((i = 1; i <= n; i++)); do launch_skiffd "h$i"; done
    for ((i = 1; i <= n; i++)); do wait_skiffd "h$i"; done
    say "importing $image on every host"
    local pids=()
    for ((i = 1; i <= n; i++)); do import_image "h$i" & pids+=($!); done
    for i in "${pids[@]}"; do wait "$i" || die "an image import failed"; done
    trap - EXIT
    ((demo)) && put_demo
    say "lab $name is up: $n hosts"
    print_env
    echo "scripts/lab.sh status --name $name; scripts/lab.sh down --name $name removes it all" >&2
}

cmd_down() {
    local rc=0 h
    [[ -f $STATE_FILE ]] && source "$STATE_FILE"
    [[ -n $bin ]] || bin=$repo/target/debug
    if [[ ! -d $STATE && ! -d $RUN && ! -e /run/netns/$UNDERLAY ]] && ! ip netns list | grep -q "^$name-h[0-9]"; then
        echo "lab $name: nothing to remove" >&2
        return 0
    fi
    say "lab $name: stopping pods and skiffds"
    for h in $(hosts); do
        [[ -n $(skiffd_pid "$h") ]] && api_delete_all "$h"
    done
    # shellcheck disable=SC2046
    stop_hosts $(hosts) || rc=1
    stop_etcd
    # shellcheck disable=SC2046
    sweep "$STATE" "$RUN" -- $(hosts) || rc=1
    local ns
    for ns in $(ip netns list | awk -v p="$name-" 'index($1, p) == 1 && $1 ~ /-(h[0-9]+|underlay)$/ {print $1}'); do
        ip netns delete "$ns" || { loud "could not delete netns $ns"; rc=1; }
    done
    # --one-file-system: never delete through a mount the sweep could not remove.
    rm -rf --one-file-system "$STATE" "$RUN"
    rmdir /var/lib/skiff-lab /run/skiff-lab 2>/dev/null || true
    if ((rc)); then
        loud "lab $name removed, but skiff left things behind (above)"
    else
        say "lab $name removed, nothing left behind"
    fi
    return "$rc"
}

cmd_status() {
    load_state
    local h pid subnet pods
    printf '%-5s %-12s %-8s %-16s %s\n' HOST IP SKIFFD SUBNET PODS
    for h in $(hosts); do
        pid=$(skiffd_pid "$h")
        subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$RUN/$h/run/subnet.env" 2>/dev/null || true)
        pods=-
        [[ -n $pid ]] && pods=$(pods_listed "$h" | xargs)
        printf '%-5s %-12s %-8s %-16s %s\n' "$h" "$(host_ip "$h")" "${pid:-down}" "${subnet:--}" "${pods:-none}"
    done
    if ((overlay)); then
        if etcd_healthy; then echo "etcd: $ETCD_URL healthy (pid $(etcd_pid))"; else echo "etcd: $ETCD_URL DOWN"; fi
    fi
}

cmd_add() {
    load_state
    local last h
    last=$(hosts | tail -1)
    h=h$(( ${last#h} + 1 ))
    make_host "$h"
    echo "$h: $(host_ip "$h") in netns $(host_ns "$h")" >&2
    ((start)) || return 0
    cmd_start "$h"
}

cmd_start() {
    load_state
    local h=$1
    need_host "$h"
    launch_skiffd "$h"
    if ((wait)); then
        wait_skiffd "$h"
        import_image "$h"
        echo "$h: skiffd runs (pid $(skiffd_pid "$h"))" >&2
    else
        # Import as soon as it answers; the pods wait for the image (ErrImageNeverPull) meanwhile.
        (
            for ((i = 0; i < 1200; i++)); do
                [[ -S $(host_sock "$h") ]] && on "$h" image import "$image" >/dev/null 2>&1 && exit 0
                sleep 0.1
            done
        ) </dev/null >>"$STATE/$h/skiffd.log" 2>&1 &
        echo "$h: skiffd started (pid $(skiffd_pid "$h")), not waiting for it" >&2
    fi
}

cmd_remove() {
    load_state
    local h=$1 rc=0
    need_host "$h"
    # Unplugged first: from now on the others only learn of its end by its lease expiring.
    ip -n "$UNDERLAY" link set "$h" down 2>/dev/null || true
    stop_hosts "$h" || rc=1
    sweep "$STATE/$h" "$RUN/$h" -- "$h" || rc=1
    ip netns delete "$(host_ns "$h")" 2>/dev/null || true
    rm -rf --one-file-system "${STATE:?}/$h" "${RUN:?}/$h"
    echo "$h removed" >&2
    return "$rc"
}

# One compound command, parsed whole before it runs, ending in `exit`: bash reads a script as it
# goes, so editing lab.sh while a lab command runs must not make it run the edited text.
{
case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) load_state; print_env "${args[@]}" ;;
    exec)
        load_state
        ((${#args[@]} >= 2)) || die "usage: exec HOST CMD..."
        need_host "${args[0]}"
        export SKIFF_SOCKET
        SKIFF_SOCKET=$(host_sock "${args[0]}") PATH=$bin:$PATH \
            exec nsenter --net="/run/netns/$(host_ns "${args[0]}")" "${args[@]:1}"
        ;;
    apply) load_state; ((${#args[@]} >= 2)) || die "usage: apply HOST FILE..."; apply "${args[@]}" ;;
    demo) load_state; put_demo ;;
    add) cmd_add ;;
    remove) ((${#args[@]} == 1)) || die "usage: remove HOST"; cmd_remove "${args[0]}" ;;
    start) ((${#args[@]} == 1)) || die "usage: start HOST"; cmd_start "${args[0]}" ;;
    stop)
        ((${#args[@]} == 1)) || die "usage: stop HOST"
        load_state; need_host "${args[0]}"; stop_hosts --keep-pods "${args[0]}"
        ;;
    restart)
        ((${#args[@]} == 1)) || die "usage: restart HOST"
        load_state; need_host "${args[0]}"
        stop_hosts --keep-pods "${args[0]}"
        cmd_start "${args[0]}"
        ;;
    etcd)
        load_state
        case ${args[0]:-} in
            stop) stop_etcd ;;
            start) start_etcd ;;
            *) die "usage: etcd stop|start" ;;
        esac
        ;;
    *) usage >&2; die "unknown command $cmd" ;;
esac
exit
}
