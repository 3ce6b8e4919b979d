#!/usr/bin/env bash
# The attack campaign: every hole found by attacking a running skiff node (issue #13), tried
# again against a throwaway node. One line per case (PASS: the hole stays closed, FAIL: it is
# open again, with what was seen), then "N passed, M failed".
#
# Usage: sudo scripts/attack.sh [CASE...]        (no CASE: all of them; --list names them)
#
# The node is a skiffd in a throwaway network namespace with its state in /tmp/skiff-attack.*;
# crafted images are made from the test image with umoci (a passwd symlinked to /dev/zero, a
# FIFO, a clone() probe compiled with cc -static), and hostile manifests, kills of shims and of
# skiffd, corrupted state files, a removed netns, a fork bomb, a log flood and a full disk are
# thrown at it. An EXIT trap stops everything and removes the namespace, mounts and files, also
# on failure or Ctrl-C. The root tests in tests/ cover each fix; this script is the campaign to
# keep growing: add a case for every hole found.
#
# Knobs (environment): PROFILE=debug|release (binaries under target/PROFILE; built if missing)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
PROFILE=${PROFILE:-debug}

die() { echo "attack: $*" >&2; exit 2; }
((EUID == 0)) || die "must run as root (sudo $0)"

all_cases=(modes setuid cgroup-escape seccomp-clone passwd-zero passwd-fifo hosts-write
    log-line-flood log-rotation shim-kill state-truncated netns-removed images-json-truncated
    manifest-huge long-cmdline api-slowloris import-fifo share-pid fork-bomb disk-full
    sa-token)
if [[ ${1:-} == --list ]]; then printf '%s\n' "${all_cases[@]}"; exit 0; fi
cases=("$@")
((${#cases[@]})) || cases=("${all_cases[@]}")
for c in "${cases[@]}"; do
    [[ " ${all_cases[*]} " == *" $c "* ]] || die "unknown case $c (--list names them)"
done

# shellcheck source=scripts/install-deps.sh
source scripts/install-deps.sh
install_deps >&2 || exit 2
find_cargo || exit 2
if [[ $PROFILE == release ]]; then
    cargo build -q --release --workspace --bins || die "build failed"
else
    cargo build -q --workspace --bins || die "build failed"
fi
BIN=$repo/target/$PROFILE

# ---- the node --------------------------------------------------------------------------------
W=$(mktemp -d /tmp/skiff-attack.XXXXXX)
# mktemp's 0700 would hide every permission bug below it: open it up as /var/lib would be.
chmod 0755 "$W"
NS=skiff-attack-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
ROOT=$W/root RUN=$W/run MAN=$W/manifests LOG=$W/skiffd.log
export SKIFF_SOCKET=$RUN/skiff.sock
SKIFFD_PID=
# ATTACK_FLAGS overrides them, e.g. to try the campaign against an older skiffd. Image GC is off:
# on a nearly full disk it would remove the crafted images between cases.
read -r -a EXTRA_FLAGS <<<"${ATTACK_FLAGS:---pod-pids-limit 200 --container-log-max-size 1Mi --container-log-max-files 3 --file-check-frequency 2 --api-listen none --image-gc-high-threshold 100}"

skiff() { "$BIN/skiff" "$@"; }
start_skiffd() {
    rm -f "$SKIFF_SOCKET"
    nsenter --net="/run/netns/$NS" "$BIN/skiffd" --pod-manifest-path "$MAN" --root-dir "$ROOT" \
        --run-dir "$RUN" --node-name attack --cni-conf-dir "$W/net.d" \
        "${EXTRA_FLAGS[@]}" "$@" </dev/null >>"$LOG" 2>&1 &
    SKIFFD_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        skiff get pods >/dev/null 2>&1 && return 0
        kill -0 "$SKIFFD_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$LOG" >&2
    die "skiffd did not come up"
}
stop_skiffd() { # SIGTERM, or SIGKILL with "kill"
    [[ -n $SKIFFD_PID ]] || return 0
    kill "-${1:-TERM}" "$SKIFFD_PID" 2>/dev/null
    local i
    for ((i = 0; i < 200; i++)); do kill -0 "$SKIFFD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SKIFFD_PID" 2>/dev/null
    wait "$SKIFFD_PID" 2>/dev/null
    SKIFFD_PID=
}
cleanup() {
    trap '' INT TERM
    set +e
    if [[ -n $SKIFFD_PID ]] && kill -0 "$SKIFFD_PID" 2>/dev/null; then
        rm -f "$MAN"/*
        for _ in $(seq 300); do
            [[ -z $(skiff get pods -A -o json 2>/dev/null | jq -r '.items[]?.metadata.name') ]] && break
            sleep 0.1
        done
        stop_skiffd
    fi
    # Whatever a failed case left: processes of this node's containers, then its mounts.
    local p
    for p in $(pgrep -f "skiff-shim.*$W"); do kill -KILL "$p" 2>/dev/null; done
    awk -v w="$W" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    for p in $(find /sys/fs/cgroup -type d -path '*skiff*' 2>/dev/null | sort -r); do
        rmdir "$p" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS" || die "ip netns add failed"
ip -n "$NS" link set lo up
mkdir -p "$MAN" "$W/img" "$W/net.d"
scripts/build-test-image.sh "$W/img/test" skiff.test/busybox:latest >/dev/null || die "test image"
start_skiffd
skiff image import "$W/img/test" >/dev/null || die "image import failed"

# ---- helpers for the cases -------------------------------------------------------------------
# craft NAME SETUP : an image skiff.test/NAME:latest = the test image plus what the shell
# function SETUP does to the rootfs (its $1), imported into the node.
craft() {
    local name=$1 setup=$2 dir=$W/img/$1
    cp -a "$W/img/test" "$dir"
    umoci unpack --rootless --image "$dir:latest" "$W/bundle-$name" >/dev/null 2>&1 ||
        umoci unpack --image "$dir:latest" "$W/bundle-$name" >/dev/null || return 1
    "$setup" "$W/bundle-$name/rootfs" || return 1
    umoci repack --image "$dir:latest" "$W/bundle-$name" >/dev/null || return 1
    [[ -n ${CRAFT_USER:-} ]] && { umoci config --image "$dir:latest" --config.user "$CRAFT_USER" || return 1; }
    # umoci keeps only the OCI ref name; skiff names an imported image by containerd's annotation.
    jq --arg n "skiff.test/$name:latest" \
        '.manifests |= map(select(.annotations["org.opencontainers.image.ref.name"] == "latest")
            | .annotations["io.containerd.image.name"] = $n)' "$dir/index.json" >"$dir/index.new" &&
        mv "$dir/index.new" "$dir/index.json"
    rm -rf "$W/bundle-$name"
    skiff image import "$dir" >/dev/null
}
# pod NAME IMAGE SCRIPT [EXTRA_YAML_UNDER_SPEC] [EXTRA_YAML_UNDER_CONTAINER]
pod() {
    cat >"$W/$1.yaml.tmp" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: ${RESTART:-Always}
  terminationGracePeriodSeconds: 1
${4:-}
  containers:
  - name: c
    image: $2
    imagePullPolicy: Never
    command: ["sh", "-c", $(printf '%s' "$3" | jq -Rs .)]
${5:-}
EOF
    mv "$W/$1.yaml.tmp" "$MAN/$1.yaml"
}
unpod() { rm -f "$MAN/$1.yaml"; wait_until 60 gone "$1"; }
gone() { ! skiff get pod "$1" -o json >/dev/null 2>&1; }
podjson() { skiff get pod "$1" -o json 2>/dev/null; }
phase_is() { [[ $(podjson "$1" | jq -r .status.phase) == "$2" ]]; }
running() { [[ $(podjson "$1" | jq -r '.status.containerStatuses[0].state.running != null') == true ]]; }
# wait_until SECONDS CMD... : polls CMD every 0.2 s
wait_until() {
    local end=$((SECONDS + $1))
    shift
    while ((SECONDS < end)); do "$@" && return 0; sleep 0.2; done
    "$@"
}
# waiting_error NAME: the container waits with an error reason (not just ContainerCreating)
waiting_error() {
    local r
    r=$(podjson "$1" | jq -r '.status.containerStatuses[0].state.waiting.reason // empty')
    [[ -n $r && $r != ContainerCreating ]]
}
uid_of() { podjson "$1" | jq -r .metadata.uid; }
# pod_cgroup_procs NAME : the pids in the pod's cgroups (every hierarchy), deduplicated
pod_cgroup_procs() {
    local uid
    uid=$(uid_of "$1")
    find /sys/fs/cgroup -path "*$uid*" -name cgroup.procs 2>/dev/null -exec cat {} + | sort -u
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cgv2() { [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; }
declare -i passed=0 failed=0
result() { # CASE OK|NO DETAIL
    if [[ $2 == OK ]]; then
        passed+=1
        printf 'PASS %-22s %s\n' "$1" "$3"
    else
        failed+=1
        printf 'FAIL %-22s %s\n' "$1" "$3"
    fi
}
IMG=skiff.test/busybox:latest

# ---- the cases -------------------------------------------------------------------------------
# Each prints nothing itself; it sets DETAIL and returns 0 when the hole stays closed.

case_modes() {
    cat >"$MAN/modes-secret.yaml" <<'EOF'
apiVersion: v1
kind: Secret
metadata: {name: modes-secret}
stringData: {password: hunter2}
EOF
    pod modes "$IMG" 'sleep 3600' '' '    env: [{name: PW, valueFrom: {secretKeyRef: {name: modes-secret, key: password}}}]
    volumeMounts: [{name: s, mountPath: /s}]
  volumes: [{name: s, secret: {secretName: modes-secret}}]'
    wait_until 60 running modes || { DETAIL="pod did not run"; return 1; }
    local f leaks=()
    # Every file and directory under the root and run dirs an unprivileged user could open.
    while read -r f; do
        runuser -u nobody -- test -r "$f" 2>/dev/null && leaks+=("$f")
    done < <(find "$ROOT" "$RUN" -xdev \( -name config.json -o -name '*.log' -o -name pod.json \
        -o -path '*secret*' -o -name password \) 2>/dev/null | head -200)
    # The secret's tmpfs, wherever it is mounted on the host.
    while read -r f; do
        runuser -u nobody -- cat "$f/password" >/dev/null 2>&1 && leaks+=("$f/password")
    done < <(awk -v w="$W" 'index($5, w) == 1 && $0 ~ /tmpfs/ { print $5 }' /proc/self/mountinfo)
    local modes
    modes=$(stat -c '%a %n' "$ROOT" "$RUN" "$ROOT/pods" 2>/dev/null | tr '\n' ' ')
    unpod modes
    rm -f "$MAN/modes-secret.yaml"
    ((${#leaks[@]} == 0)) || { DETAIL="nobody reads: ${leaks[*]:0:3}"; return 1; }
    DETAIL="nobody reads no secret, config.json, log or pod.json ($modes)"
}

case_setuid() {
    probes_image || { DETAIL="could not build the probes image (cc, umoci)"; return 1; }
    pod suid "$PROBES" 'cp /euid-probe /tmp/sx && chmod 4755 /tmp/sx && sleep 3600'
    wait_until 60 running suid || { DETAIL="pod did not run"; return 1; }
    local uid sx found=0 opened=()
    uid=$(uid_of suid)
    wait_until 20 test -n "$(find "$ROOT" -path "*$uid*" -name sx -perm -4000 2>/dev/null | head -1)"
    # Every copy of the setuid binary the host can see (upper dir, merged rootfs mount).
    while read -r sx; do
        found=1
        # nosuid on the way, or no way at all: an unprivileged user must not get euid 0.
        local euid
        euid=$(runuser -u nobody -- "$sx" 2>/dev/null)
        [[ $euid == 0 ]] && opened+=("$sx")
    done < <(find "$ROOT" "$RUN" -name sx -perm -4000 2>/dev/null)
    unpod suid
    ((found)) || { DETAIL="the container's setuid copy was not found on the host to try"; return 1; }
    ((${#opened[@]} == 0)) || { DETAIL="nobody got euid 0 through ${opened[0]}"; return 1; }
    DETAIL="the container's setuid binary gives nobody no root from the host"
}

case_cgroup-escape() {
    local try
    if cgv2; then
        try='echo max > /sys/fs/cgroup/memory.max; echo max > /sys/fs/cgroup/pids.max'
    else
        try='echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; echo max > /sys/fs/cgroup/pids/pids.max; mkdir /sys/fs/cgroup/systemd/escape'
    fi
    pod cg "$IMG" 'sleep 3600' '' '    resources: {limits: {memory: 32Mi}}'
    wait_until 60 running cg || { DETAIL="pod did not run"; return 1; }
    local out
    out=$(skiff exec cg -- sh -c "$try; echo done" 2>&1)
    local limit
    if cgv2; then
        limit=$(skiff exec cg -- cat /sys/fs/cgroup/memory.max 2>&1)
    else
        limit=$(skiff exec cg -- cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>&1)
    fi
    local host_limit
    host_limit=$(find /sys/fs/cgroup -path "*$(uid_of cg)*" \( -name memory.max -o -name memory.limit_in_bytes \) -exec cat {} + 2>/dev/null | sort -u | head -1)
    unpod cg
    [[ $out == *"Read-only file system"* ]] || { DETAIL="writes not refused: $out"; return 1; }
    [[ $host_limit == 33554432 ]] || { DETAIL="the pod's limit is now $host_limit"; return 1; }
    DETAIL="cgroupfs read-only in the container (limit seen inside: $limit)"
}

# probes ROOTFS: static C probes at /clone-probe (clone() with CLONE_NEWUSER|CLONE_NEWNS) and
# /euid-probe (prints its effective uid; busybox would drop a setuid bit by itself).
probes() {
    cat >"$W/clone.c" <<'EOF'
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
static char stack[65536];
static int child(void *arg) { (void)arg; return 0; }
int main(void) {
    int pid = clone(child, stack + sizeof stack, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, 0);
    if (pid < 0) { perror("clone"); return 1; }
    waitpid(pid, 0, 0);
    puts("clone-allowed");
    return 0;
}
EOF
    cat >"$W/euid.c" <<'EOF'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d\n", (int)geteuid()); return 0; }
EOF
    cc -static -O2 -o "$1/clone-probe" "$W/clone.c" && cc -static -O2 -o "$1/euid-probe" "$W/euid.c"
}
PROBES=
probes_image() { # crafts skiff.test/probes:latest once
    [[ -n $PROBES ]] && return 0
    command -v cc >/dev/null || return 1
    craft probes probes && PROBES=skiff.test/probes:latest
}

case_seccomp-clone() {
    probes_image || { DETAIL="could not build the probes image (cc, umoci)"; return 1; }
    RESTART=Never pod seccomp "$PROBES" '/clone-probe; sleep 3600' \
        '  securityContext: {seccompProfile: {type: RuntimeDefault}}'
    wait_until 60 running seccomp || { DETAIL="pod did not run"; return 1; }
    local out
    wait_until 20 eval '[[ -n $(skiff logs seccomp 2>/dev/null) ]]'
    out=$(skiff logs seccomp 2>&1)
    unpod seccomp
    [[ $out == *clone-allowed* ]] && { DETAIL="clone(CLONE_NEWUSER|CLONE_NEWNS) allowed under RuntimeDefault"; return 1; }
    [[ $out == *clone:* ]] || { DETAIL="probe printed nothing: $out"; return 1; }
    DETAIL="RuntimeDefault refuses clone with namespace flags (${out//$'\n'/ })"
}

passwd_zero() { rm -f "$1/etc/passwd" && ln -s /dev/zero "$1/etc/passwd"; }
case_passwd-zero() {
    CRAFT_USER=nobody craft pwzero passwd_zero || { DETAIL="could not craft the image"; return 1; }
    local before
    before=$(rss_kb "$SKIFFD_PID")
    pod pwzero skiff.test/pwzero:latest 'sleep 3600'
    local reason=
    wait_until 30 eval 'waiting_error pwzero'
    reason=$(podjson pwzero | jq -r '.status.containerStatuses[0].state.waiting | "\(.reason): \(.message)"')
    local after
    after=$(rss_kb "$SKIFFD_PID")
    unpod pwzero || { DETAIL="pod not deletable"; return 1; }
    ((after < before + 65536)) || { DETAIL="skiffd grew from $before to $after kB"; return 1; }
    [[ $reason == *Error* ]] || { DETAIL="no error on the container: $reason"; return 1; }
    DETAIL="refused: $reason; skiffd ${before} -> ${after} kB"
}

passwd_fifo() { rm -f "$1/etc/passwd" && mkfifo "$1/etc/passwd"; }
case_passwd-fifo() {
    CRAFT_USER=nobody craft pwfifo passwd_fifo || { DETAIL="could not craft the image"; return 1; }
    pod pwfifo skiff.test/pwfifo:latest 'sleep 3600'
    wait_until 30 eval 'waiting_error pwfifo'
    local reason
    reason=$(podjson pwfifo | jq -r '.status.containerStatuses[0].state.waiting | "\(.reason): \(.message)"')
    rm -f "$MAN/pwfifo.yaml"
    [[ $reason == *Error* ]] || { DETAIL="no error on the container: $reason"; return 1; }
    wait_until 30 gone pwfifo || { DETAIL="pod not deletable (a thread hangs on the FIFO)"; return 1; }
    DETAIL="refused at once and deletable: $reason"
}

case_hosts-write() {
    pod hostsw "$IMG" 'dd if=/dev/zero of=/etc/hosts bs=1M count=30 2>&1; sleep 3600' '' \
        '    resources: {limits: {ephemeral-storage: 20Mi}}'
    wait_until 40 phase_is hostsw Failed
    local reason
    reason=$(podjson hostsw | jq -r '.status.reason // empty')
    local size
    size=$(find "$ROOT" "$RUN" -path "*$(uid_of hostsw)*" -name hosts -size +20M 2>/dev/null | head -1)
    unpod hostsw
    # Closed either way: the write was cut short, or it counted and the pod was evicted.
    [[ $reason == Evicted || -z $size ]] ||
        { DETAIL="30 MB written into /etc/hosts ($size) under a 20Mi limit, not evicted"; return 1; }
    DETAIL="30 MB into /etc/hosts under a 20Mi limit: ${reason:-write cut short} (no file over 20M)"
}

mon_of() { # pod -> pid of its container's skiff-shim-mon
    pgrep -f "skiff-shim-mon.*$(uid_of "$1")" | head -1
}
case_log-line-flood() {
    pod flood "$IMG" 'yes | tr -d "\n"'
    wait_until 60 running flood || { DETAIL="pod did not run"; return 1; }
    local mon first peak=0 r i
    wait_until 10 test -n "$(mon_of flood)"
    mon=$(mon_of flood)
    [[ -n $mon ]] || { unpod flood; DETAIL="no skiff-shim-mon found for the pod"; return 1; }
    sleep 2 # let the first buffers fill: the baseline is the flooded steady state
    first=$(rss_kb "$mon")
    for ((i = 0; i < 40; i++)); do
        r=$(rss_kb "$mon")
        ((r > peak)) && peak=$r
        sleep 0.5
    done
    local p_records
    p_records=$(find "$ROOT" -path "*$(uid_of flood)*" -name '*.log*' -exec grep -c ' stdout P ' {} + 2>/dev/null | awk -F: '{ s += $NF } END { print s + 0 }')
    unpod flood
    ((peak < first + 4096)) || { DETAIL="shim-mon grew from $first to $peak kB in 20 s"; return 1; }
    ((p_records > 0)) || { DETAIL="no partial (P) records in the log"; return 1; }
    DETAIL="shim-mon flat at ${first}-${peak} kB for 20 s of one endless line; $p_records P records"
}

case_log-rotation() {
    pod chatty "$IMG" 'i=0; while :; do echo "line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; i=$((i+1)); done'
    wait_until 60 running chatty || { DETAIL="pod did not run"; return 1; }
    local dir total=0 n
    dir=$(find "$ROOT" -type d -path "*$(uid_of chatty)*" -name logs 2>/dev/null | head -1)
    [[ -z $dir ]] && dir=$ROOT
    # 1Mi x 3 files: wait until well past it would have been written, then measure.
    sleep 8
    total=$(find "$ROOT" -path "*$(uid_of chatty)*" -name '*.log*' -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    n=$(find "$ROOT" -path "*$(uid_of chatty)*" -name '*.log*' 2>/dev/null | wc -l)
    local tail
    tail=$(skiff logs chatty --tail 1 2>&1)
    unpod chatty
    ((total <= 4 * 1048576 + 262144)) || { DETAIL="$total bytes of logs in $n files with max 1Mi x 3"; return 1; }
    [[ $tail == line* ]] || { DETAIL="logs --tail 1 gave: $tail"; return 1; }
    DETAIL="$n log files, $total bytes (max 1Mi x 3); logs --tail: ${tail:0:20}..."
}

# max_sleepers NAME SECONDS : the most 'sleep 3600' processes seen at once in the pod's cgroups
max_sleepers() {
    local max=0 end=$((SECONDS + $2)) n p
    while ((SECONDS < end)); do
        n=0
        for p in $(pod_cgroup_procs "$1"); do
            [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == "sleep 3600 " ]] && n=$((n + 1))
        done
        # Also outside the cgroup: a process of this pod's container reparented to init.
        ((n > max)) && max=$n
        sleep 0.2
    done
    echo "$max"
}
case_shim-kill() {
    pod shimk "$IMG" 'exec sleep 3600'
    wait_until 60 running shimk || { DETAIL="pod did not run"; return 1; }
    local uid mon
    uid=$(uid_of shimk)
    mon=$(mon_of shimk)
    [[ -n $mon ]] || { unpod shimk; DETAIL="no skiff-shim-mon found"; return 1; }
    kill -KILL "$mon"
    local max
    max=$(max_sleepers shimk 15)
    wait_until 30 running shimk
    local ok_running=$?
    rm -f "$MAN/shimk.yaml"
    wait_until 60 gone shimk
    local left
    left=$(pgrep -f 'sleep 3600' | while read -r p; do grep -l "$uid" "/proc/$p/cgroup" 2>/dev/null; done | wc -l)
    local cg
    cg=$(find /sys/fs/cgroup -type d -path "*$uid*" 2>/dev/null | wc -l)
    ((max <= 1)) || { DETAIL="$max copies of the container at once after its shim was killed"; return 1; }
    ((ok_running == 0)) || { DETAIL="the pod did not come back Running"; return 1; }
    ((left == 0 && cg == 0)) || { DETAIL="after delete: $left processes, $cg cgroup dirs left"; return 1; }
    DETAIL="never two copies; pod Running again; delete leaves no process or cgroup"
}

case_state-truncated() {
    pod statet "$IMG" 'exec sleep 3600'
    wait_until 60 running statet || { DETAIL="pod did not run"; return 1; }
    local uid files
    uid=$(uid_of statet)
    stop_skiffd KILL
    files=$(find "$ROOT" "$RUN" -path "*$uid*" \( -name state.json -o -name meta.json \) 2>/dev/null)
    local f
    for f in $files; do truncate -s 7 "$f"; done
    start_skiffd
    local max
    max=$(max_sleepers statet 15)
    wait_until 30 running statet
    local ok_running=$?
    rm -f "$MAN/statet.yaml"
    wait_until 60 gone statet
    local cg
    cg=$(find /sys/fs/cgroup -type d -path "*$uid*" 2>/dev/null | wc -l)
    [[ -n $files ]] || { DETAIL="no state.json/meta.json found to truncate"; return 1; }
    ((max <= 1)) || { DETAIL="$max copies after truncating $(wc -w <<<"$files") state files"; return 1; }
    ((ok_running == 0)) || { DETAIL="the pod did not come back Running"; return 1; }
    ((cg == 0)) || { DETAIL="$cg cgroup dirs left after delete"; return 1; }
    DETAIL="$(wc -w <<<"$files") state files truncated: one copy, Running, clean delete"
}

case_netns-removed() {
    pod netnsr "$IMG" 'exec sleep 3600'
    wait_until 60 running netnsr || { DETAIL="pod did not run"; return 1; }
    local uid ip1 ip2
    uid=$(uid_of netnsr)
    ip1=$(podjson netnsr | jq -r .status.podIP)
    umount "$RUN/netns/$uid" 2>/dev/null
    rm -f "$RUN/netns/$uid"
    wait_until 90 eval '[[ $(podjson netnsr | jq -r ".status.containerStatuses[0].restartCount") -ge 1 ]] && running netnsr && [[ -e $RUN/netns/$uid ]]'
    local ok=$?
    ip2=$(podjson netnsr | jq -r .status.podIP)
    unpod netnsr
    ((ok == 0)) || { DETAIL="pod did not recover after its netns was removed"; return 1; }
    DETAIL="sandbox re-created: $ip1 -> $ip2, container restarted"
}

case_images-json-truncated() {
    stop_skiffd
    local f
    f=$(find "$ROOT" -maxdepth 3 -name images.json | head -1)
    [[ -n $f ]] || { start_skiffd; DETAIL="no images.json found"; return 1; }
    truncate -s 10 "$f"
    start_skiffd
    # The index is rebuilt from the blobs (names were only in it, so they are lost): the
    # store must answer and take the image again, and pods start.
    local listed
    listed=$(skiff images 2>&1) || { DETAIL="skiff images fails: $listed"; return 1; }
    skiff image import "$W/img/test" >/dev/null 2>&1 || { DETAIL="the store takes no image"; return 1; }
    pod afterimg "$IMG" 'exec sleep 3600'
    wait_until 60 running afterimg
    local ok=$?
    unpod afterimg
    ((ok == 0)) || { DETAIL="no pod starts after images.json was truncated"; return 1; }
    DETAIL="the store rebuilt its index ($(($(wc -l <<<"$listed") - 1)) image(s) by id); pods start"
}

case_manifest-huge() {
    local before after
    before=$(rss_kb "$SKIFFD_PID")
    { echo "apiVersion: v1"; echo "kind: ConfigMap"; echo "metadata: {name: huge}"; echo "data:";
        head -c 50000000 /dev/zero | tr '\0' 'a' | fold -w 1000 | awk '{ print "  k" NR ": " $0 }'; } >"$W/huge.yaml"
    mv "$W/huge.yaml" "$MAN/huge.yaml"
    wait_until 20 eval 'skiff get events -A 2>/dev/null | grep -q huge.yaml'
    local ev
    ev=$(skiff get events -A 2>/dev/null | grep huge.yaml | head -1)
    after=$(rss_kb "$SKIFFD_PID")
    rm -f "$MAN/huge.yaml"
    [[ -n $ev ]] || { DETAIL="no event names the 50 MB file"; return 1; }
    ((after < before + 102400)) || { DETAIL="skiffd grew from $before to $after kB"; return 1; }
    DETAIL="refused with an event; skiffd ${before} -> ${after} kB"
}

case_long-cmdline() {
    local big
    big=$(head -c 200000 /dev/zero | tr '\0' 'x')
    RESTART=Never pod longcmd "$IMG" "echo $big"
    wait_until 60 eval '[[ $(podjson longcmd | jq -r ".status.containerStatuses[0].state.terminated.reason // .status.containerStatuses[0].lastState.terminated.reason // empty") != "" ]]'
    local t
    t=$(podjson longcmd | jq -r '.status.containerStatuses[0] | (.state.terminated // .lastState.terminated) | "\(.reason) \(.exitCode)"')
    unpod longcmd
    [[ $t == "StartError 128" ]] || { DETAIL="a too-long command line ends as '$t'"; return 1; }
    DETAIL="a 200 kB argument ends as StartError 128"
}

case_api-slowloris() {
    local t0=$SECONDS
    # Half a request line, then nothing: the server must hang up by itself.
    timeout 120 python3 - "$SKIFF_SOCKET" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n")
s.settimeout(110)
try:
    while s.recv(4096):
        pass
except socket.timeout:
    sys.exit(1)
EOF
    local rc=$? took=$((SECONDS - t0))
    ((rc == 0)) || { DETAIL="the connection was still open after 110 s"; return 1; }
    DETAIL="an incomplete request is dropped after ${took} s"
}

case_import-fifo() {
    mkfifo "$W/fifo.tar"
    timeout 20 "$BIN/skiff" image import "$W/fifo.tar" >"$W/import.out" 2>&1
    local rc=$?
    rm -f "$W/fifo.tar"
    ((rc != 124)) || { DETAIL="skiff image import of a FIFO hangs"; return 1; }
    ((rc != 0)) || { DETAIL="a FIFO was imported?"; return 1; }
    DETAIL="refused: $(head -c 120 "$W/import.out")"
}

case_share-pid() {
    cat >"$MAN/sharepid.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: sharepid}
spec:
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: a, image: $IMG, imagePullPolicy: Never, command: [sh, -c, "exec sleep 3601"]}
  - {name: b, image: $IMG, imagePullPolicy: Never, command: [sh, -c, "exec sleep 3602"]}
EOF
    wait_until 60 eval '[[ $(podjson sharepid | jq "[.status.containerStatuses[]? | select(.state.running)] | length") == 2 ]]' ||
        { unpod sharepid; DETAIL="pod did not run"; return 1; }
    local seen
    seen=$(skiff exec sharepid -c b -- ps 2>&1)
    unpod sharepid
    [[ $seen == *"sleep 3601"* ]] || { DETAIL="container b does not see a's process: ${seen//$'\n'/ }"; return 1; }
    DETAIL="containers see each other's processes"
}

case_fork-bomb() {
    pod bomb "$IMG" 'b() { b | b & }; b; sleep 3600'
    wait_until 60 running bomb || { DETAIL="pod did not run"; return 1; }
    local t0 t1 n=0 c i
    # The most processes the pod held at once over 3 s (the bomb hits the limit, then its
    # shells die off as forks fail).
    for ((i = 0; i < 30; i++)); do
        c=$(pod_cgroup_procs bomb | wc -l)
        ((c > n)) && n=$c
        sleep 0.1
    done
    t0=${EPOCHREALTIME/[.,]/}
    skiff get pods >/dev/null 2>&1 || { unpod bomb; DETAIL="the API does not answer during a fork bomb"; return 1; }
    t1=${EPOCHREALTIME/[.,]/}
    unpod bomb || { DETAIL="the bomb's pod is not deletable"; return 1; }
    ((n <= 210)) || { DETAIL="$n processes in the pod with --pod-pids-limit 200"; return 1; }
    DETAIL="at most $n processes (limit 200); API answered in $(((t1 - t0) / 1000)) ms; pod deleted"
}

case_disk-full() {
    # A second node whose root dir is a 64 MiB tmpfs: a container fills it.
    local d=$W/small
    mkdir -p "$d/root"
    mount -t tmpfs -o size=64m tmpfs "$d/root" || { DETAIL="cannot mount a tmpfs"; return 1; }
    stop_skiffd
    local root_save=$ROOT
    ROOT=$d/root
    start_skiffd
    skiff image import "$W/img/test" >/dev/null 2>&1
    pod filler "$IMG" 'dd if=/dev/zero of=/fill bs=1M count=100 2>&1; sleep 3600'
    wait_until 60 running filler
    wait_until 30 eval '[[ $(df --output=avail "$ROOT" | tail -1) -lt 1024 ]]'
    local alive=0
    skiff get pods >/dev/null 2>&1 && alive=1
    skiff exec filler -- rm -f /fill >/dev/null 2>&1
    pod after "$IMG" 'exec sleep 3600'
    wait_until 60 running after
    local ok=$?
    local pj
    pj=$(find "$ROOT" -path "*$(uid_of after)*" -name pod.json 2>/dev/null | head -1)
    rm -f "$MAN"/*.yaml
    wait_until 60 eval '[[ -z $(skiff get pods -o json | jq -r ".items[]?.metadata.name") ]]'
    stop_skiffd
    umount -l "$d/root"
    ROOT=$root_save
    start_skiffd
    ((alive)) || { DETAIL="skiffd stopped answering on a full disk"; return 1; }
    ((ok == 0)) || { DETAIL="no pod starts once space is back"; return 1; }
    [[ -n $pj ]] || { DETAIL="pod.json not written once space is back"; return 1; }
    DETAIL="skiffd answered on a full disk; pods start and pod.json is written once space is back"
}

case_sa-token() {
    # A pod's automounted token against the TLS API: it may read pods, but no Secret, and may
    # not create a privileged pod (root on the host), exec into another pod or delete one.
    stop_skiffd
    local saved=("${EXTRA_FLAGS[@]}") i
    for i in "${!EXTRA_FLAGS[@]}"; do
        [[ ${EXTRA_FLAGS[i]} == none && ${EXTRA_FLAGS[i - 1]} == --api-listen ]] &&
            EXTRA_FLAGS[i]=127.0.0.1:6443
    done
    start_skiffd
    cat >"$MAN/sa-secret.yaml" <<'EOF2'
apiVersion: v1
kind: Secret
metadata: {name: sa-secret}
stringData: {password: hunter2}
EOF2
    pod sa "$IMG" 'sleep 3600'
    wait_until 60 running sa
    local tok
    tok=$(skiff exec sa -- cat /var/run/secrets/kubernetes.io/serviceaccount/token 2>/dev/null)
    api() { # METHOD PATH [BODY] -> HTTP status
        nsenter --net="/run/netns/$NS" curl -sk -o /dev/null -w '%{http_code}' -X "$1" \
            -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
            ${3:+--data "$3"} "https://127.0.0.1:6443$2"
    }
    local pods secret secrets create exec del deploy
    pods=$(api GET /api/v1/namespaces/default/pods)
    secret=$(api GET /api/v1/namespaces/default/secrets/sa-secret)
    secrets=$(api GET /api/v1/secrets)
    create=$(api POST /api/v1/namespaces/default/pods '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"evil"},"spec":{"containers":[{"name":"c","image":"'"$IMG"'","securityContext":{"privileged":true}}]}}')
    exec=$(api POST '/api/v1/namespaces/default/pods/sa/exec?command=id&stdout=true')
    del=$(api DELETE /api/v1/namespaces/default/pods/sa)
    # A workload whose controller (root, in skiffd) would make the privileged pod for it.
    deploy=$(api POST /apis/apps/v1/namespaces/default/deployments '{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"evil"},"spec":{"selector":{"matchLabels":{"a":"evil"}},"template":{"metadata":{"labels":{"a":"evil"}},"spec":{"containers":[{"name":"c","image":"'"$IMG"'","securityContext":{"privileged":true}}]}}}}')
    local evil=0
    skiff get pod evil >/dev/null 2>&1 && evil=1
    skiff get pods 2>/dev/null | grep -q '^evil-' && evil=1
    unpod sa
    rm -f "$MAN/sa-secret.yaml"
    stop_skiffd
    EXTRA_FLAGS=("${saved[@]}")
    start_skiffd
    [[ -n $tok ]] || { DETAIL="no token in the pod"; return 1; }
    [[ $pods == 200 ]] || { DETAIL="the token does not even read pods ($pods)"; return 1; }
    [[ $secret == 403 && $secrets == 403 ]] || { DETAIL="Secrets readable with a pod's token ($secret, $secrets)"; return 1; }
    [[ $create == 403 && $evil == 0 ]] || { DETAIL="a pod's token created a pod ($create)"; return 1; }
    [[ $exec == 403 && $del == 403 ]] || { DETAIL="exec $exec, delete $del with a pod's token"; return 1; }
    [[ $deploy == 403 ]] || { DETAIL="a pod's token created a Deployment ($deploy)"; return 1; }
    DETAIL="pods 200; secret, secrets, create privileged pod, exec, delete, create Deployment: 403"
}

# ---- run -------------------------------------------------------------------------------------
echo "attacking a skiffd ($PROFILE) in netns $NS, state in $W"
for c in "${cases[@]}"; do
    DETAIL=
    if "case_$c"; then result "$c" OK "$DETAIL"; else result "$c" NO "$DETAIL"; fi
done
echo "${passed} passed, ${failed} failed"
((failed == 0))
