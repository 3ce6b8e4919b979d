#!/usr/bin/env bash
# Run skiff for a try: build it, start skiffd in a throwaway network namespace with the pods in
# examples/demo/, show them, then keep skiffd running until Ctrl-C and clean up everything.
#
# Usage: sudo scripts/demo.sh [--no-wait]
#   --no-wait   show the pods and clean up at once (the smoke test scripts/test.sh runs)
#
# skiffd runs in a network namespace of its own (`nsenter --net`, not `ip netns exec`, which
# would also give it a private mount namespace and hide its mounts from the rest of the host),
# so the demo never touches the host's network. Its state lives in a fresh /tmp/skiff-demo.*
# directory, and it does not use /etc/skiff, /var/lib/skiff or /run/skiff.
#
# On exit the pods are stopped the normal way (manifests removed, skiffd stops them), then
# skiffd is stopped. Anything left behind after that (shims, container processes, mounts,
# cgroups) is a bug in skiff: it is reported loudly, removed, and the exit status is 1.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
wait_for_ctrl_c=1
for arg in "$@"; do
    case $arg in
        --no-wait) wait_for_ctrl_c=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -t 1 ]]; then bold=$'\e[1m' red=$'\e[1;31m' off=$'\e[0m'; else bold= red= off=; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
loud() { printf '\n%s!!! %s%s\n' "$red" "$*" "$off" >&2; }
die() { loud "demo: $*"; exit 1; }

((EUID == 0)) || die "skiffd runs containers and must run as root: sudo $0 $*"

# shellcheck source=scripts/install-deps.sh
source scripts/install-deps.sh
install_deps
find_cargo

# SKIFF_PROFILE=debug reuses a debug build (scripts/test.sh's smoke run has one already).
profile=${SKIFF_PROFILE:-release}
if [[ $profile == release ]]; then
    say "building skiffd, skiff, skiff-shim and the CNI plugins (cargo build --release --workspace --bins)"
    cargo build --release --workspace --bins
else
    say "building skiffd, skiff, skiff-shim and the CNI plugins (cargo build --workspace --bins)"
    cargo build --workspace --bins
fi
fix_ownership target ${CARGO_HOME:+"$CARGO_HOME"}
bin=$repo/target/$profile

say "building the test image skiff.test/busybox:latest into target/demo/image"
image=$repo/target/demo/image
scripts/build-test-image.sh "$image"
fix_ownership target

demo=$(mktemp -d /tmp/skiff-demo.XXXXXX)
chmod 0755 "$demo"
manifests=$demo/manifests
root_dir=$demo/root
run_dir=$demo/run
log=$demo/skiffd.log
mkdir -p "$manifests"
export SKIFF_SOCKET=$run_dir/skiff.sock
skiff() { "$bin/skiff" "$@"; }

netns=
skiffd_pid=
failed=0          # something in the demo did not work as it should
exit_status=130   # what Ctrl-C means: "interrupted" until the demo is up, then "done"

# Pods skiffd still lists (all namespaces), one "namespace/name" a line; "?" when it cannot say.
pods_listed() {
    local out
    out=$(skiff get pods -A 2>/dev/null) || { echo "?"; return; }
    awk 'NR > 1 && NF > 1 {print $1 "/" $2}' <<<"$out"
}

skiffd_alive() { [[ -n $skiffd_pid ]] && kill -0 "$skiffd_pid" 2>/dev/null; }

cleanup() {
    local rc=$?
    trap '' INT TERM
    trap - EXIT
    set +e
    ((rc == 0 && failed)) && rc=1
    say "cleaning up (this takes a few seconds)"

    local uids=
    if skiffd_alive; then
        uids=$(skiff get pods -A -o json 2>/dev/null | sed -n 's/.*"uid": *"\([^"]*\)".*/\1/p')
        echo "removing the manifests; skiffd stops the pods"
        rm -f "$manifests"/*
        local i left
        for ((i = 0; i < 400; i++)); do
            left=$(pods_listed)
            [[ -z $left ]] && break
            sleep 0.1
        done
        if [[ -z $left ]]; then
            echo "all pods gone after $((i / 10)).$((i % 10)) s"
        else
            loud "BUG: 40 s after the manifests were removed skiffd still lists pods:"
            skiff get pods -A -o wide >&2
            rc=1
        fi
        echo "stopping skiffd (SIGTERM)"
        kill -TERM "$skiffd_pid"
        for ((i = 0; i < 150; i++)); do
            skiffd_alive || break
            sleep 0.1
        done
        if skiffd_alive; then
            loud "BUG: skiffd still runs 15 s after SIGTERM; killing it"
            kill -KILL "$skiffd_pid"
            rc=1
        fi
        wait "$skiffd_pid" 2>/dev/null
        local st=$?
        if ((st != 0 && st != 143)); then
            loud "skiffd exited with status $st; the end of its log:"
            tail -n 20 "$log" >&2
        fi
    elif [[ -n $skiffd_pid ]]; then
        loud "skiffd was not running any more at cleanup; the end of its log:"
        tail -n 30 "$log" >&2
        rc=1
    fi
    [[ -n $netns ]] && ip netns delete "$netns" 2>/dev/null

    # What skiff should have removed itself. Each find is a bug, reported and then fixed here.
    local pids=() p cmd target
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" ]] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        target=$(readlink "/proc/$p/root" 2>/dev/null) || continue
        if [[ $cmd == *"$demo"* || $target == "$demo"/* ]]; then
            pids+=("$p")
            loud "BUG: left over process $p: ${cmd:0:200} (root ${target})"
        fi
    done
    if ((${#pids[@]})); then
        kill -KILL "${pids[@]}" 2>/dev/null
        sleep 0.5
        rc=1
    fi
    local mounts
    mounts=$(awk -v d="$demo/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    if [[ -n $mounts ]]; then
        loud "BUG: left over mounts under $demo (unmounting them):"
        printf '    %s\n' $mounts >&2
        for target in $mounts; do umount -l "$target"; done
        rc=1
    fi
    local uid dir
    for uid in $uids; do
        for dir in /sys/fs/cgroup/skiff/pod"$uid" /sys/fs/cgroup/*/skiff/pod"$uid"; do
            [[ -d $dir ]] || continue
            loud "BUG: left over cgroup $dir (removing it)"
            find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
            rc=1
        done
    done

    # Keep the last log for a look after the fact (CI prints its path).
    if [[ -f $log ]]; then
        cp "$log" "$repo/target/demo/skiffd.log" && fix_ownership "$repo/target"
        echo "skiffd's log is kept in target/demo/skiffd.log"
    fi
    # --one-file-system: never delete through a mount that survived the umounts above.
    rm -rf --one-file-system "$demo"
    if ((rc == 0)); then
        say "demo finished, nothing left behind"
    else
        loud "demo finished with problems (exit status $rc); see the messages above"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit $exit_status' INT TERM

say "copying examples/demo/*.yaml to $manifests"
# Before the image is there: the pods wait in ErrImageNeverPull and start once it is imported.
cp examples/demo/*.yaml "$manifests/"
ls "$manifests"
expected=$(cat examples/demo/*.yaml | grep -c '^kind: Pod')

# A free name: other demos and tests may be running at the same time.
while :; do
    netns=skiff-demo-$RANDOM
    [[ -e /run/netns/$netns ]] || break
done
ip netns add "$netns"

say "starting skiffd in network namespace $netns (log: $log)"
# setsid: Ctrl-C in this terminal goes to this script only; skiffd must still be running
# afterwards to stop the pods when the manifests are removed.
args=(
    --config scripts/skiff.yaml
    --pod-manifest-path "$manifests" --root-dir "$root_dir" --run-dir "$run_dir"
    --cni-conf-dir "$demo/cni/net.d"
    --file-check-frequency 5
)
echo "skiffd ${args[*]}"
setsid nsenter --net="/run/netns/$netns" "$bin/skiffd" "${args[@]}" </dev/null >"$log" 2>&1 &
skiffd_pid=$!

for ((i = 0; i < 150; i++)); do
    skiffd_alive || die "skiffd exited at start; its log:
$(tail -n 30 "$log")"
    [[ -S $SKIFF_SOCKET ]] && skiff get nodes >/dev/null 2>&1 && break
    sleep 0.1
done
[[ -S $SKIFF_SOCKET ]] || die "skiffd did not open $SKIFF_SOCKET within 15 s"
skiff get nodes
sleep 0.5
say "skiff get pods -A    (before the image is imported)"
skiff get pods -A

say "skiff image import target/demo/image"
skiff image import "$image"

say "waiting for the pods (up to 20 s)"
settled() {
    # NAMESPACE NAME READY STATUS ...: every pod Running with all containers ready, or Completed.
    skiff get pods -A 2>/dev/null | awk -v want="$expected" '
        NR == 1 {next}
        {n++; split($3, r, "/")}
        $4 == "Completed" || ($4 == "Running" && r[1] == r[2]) {ok++}
        END {exit !(n == want && ok == want)}'
}
for ((i = 0; i < 200; i++)); do
    settled && break
    sleep 0.1
done
if settled; then
    echo "all $expected pods are Running or Completed after $((i / 10)).$((i % 10)) s"
else
    loud "after 20 s not all $expected pods are Running/Completed"
    failed=1
fi

say "skiff get pods -A -o wide"
skiff get pods -A -o wide

say "skiff logs web -c fetcher    (the sidecar fetches httpd's page over the pod's localhost)"
sleep 1
skiff logs web -c fetcher || { loud "skiff logs failed"; failed=1; }

say "skiff logs init-demo -c setup"
skiff logs init-demo -c setup || { loud "skiff logs failed"; failed=1; }

say "skiff get svc,ep    (the web Service and its endpoints)"
skiff get svc || { loud "skiff get svc failed"; failed=1; }
skiff get ep || { loud "skiff get ep failed"; failed=1; }
vip=$(skiff get svc web -o json | sed -n 's/.*"clusterIP": *"\([^"]*\)".*/\1/p' | head -1)
say "skiff exec web -c fetcher -- wget -q -O - http://$vip/    (the Service's cluster IP)"
fetched=0
for _ in $(seq 1 20); do
    if skiff exec web -c fetcher -- wget -q -O - "http://$vip/"; then fetched=1; break; fi
    sleep 0.5
done
((fetched)) || { loud "fetching the Service at $vip failed"; failed=1; }

say "skiff exec web -c httpd -- sh -c 'hostname; id; wget -q -O - http://127.0.0.1:8080/'"
skiff exec web -c httpd -- sh -c 'hostname; id; wget -q -O - http://127.0.0.1:8080/' ||
    { loud "skiff exec failed"; failed=1; }

if ((!wait_for_ctrl_c)); then
    exit "$failed"
fi

exit_status=$failed
cat <<EOF

${bold}skiffd runs (pid $skiffd_pid, network namespace $netns). Try:${off}
    export SKIFF_SOCKET=$SKIFF_SOCKET
    target/$profile/skiff get pods -A -o wide
    target/$profile/skiff describe pod web
    target/$profile/skiff logs -f web -c fetcher
    target/$profile/skiff exec hello -- ps
    target/$profile/skiff get events -A
  Edit, add or remove pod manifests in $manifests and watch the pods follow.
  skiffd's log: $log
${bold}Ctrl-C stops the pods and skiffd and cleans up.${off}
EOF
# `wait` returns as soon as Ctrl-C arrives, and the INT trap runs the cleanup.
set +e
wait "$skiffd_pid"
loud "skiffd exited on its own (status $?)"
exit 1
