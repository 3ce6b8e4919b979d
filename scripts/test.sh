#!/usr/bin/env bash
# Build and test all of skiff: formatting and clippy (-D warnings), the workspace's unit and root
# integration tests, the demo as an end-to-end smoke test, the attack campaign
# (scripts/attack.sh), then a check that nothing was left behind on this host.
#
# Usage: sudo scripts/test.sh      (CI runs it through .ci/run)
#
# Must run as root: the integration tests create network namespaces, mounts and containers,
# and skipping them quietly would report a pass that tested little.
# Exits non-zero when any step fails; the last line sums up.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -t 1 ]]; then bold=$'\e[1m' red=$'\e[1;31m' off=$'\e[0m'; else bold= red= off=; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
loud() { printf '\n%s!!! %s%s\n' "$red" "$*" "$off" >&2; }

if ((EUID != 0)); then
    loud "test.sh must run as root (sudo $0): the root integration tests would be skipped."
    exit 1
fi

start=$SECONDS
passed=()
failed=()
summary() {
    local secs=$((SECONDS - start))
    if ((${#failed[@]} == 0)); then
        printf '\n%stest.sh: PASS (%s) in %d s%s\n' "$bold" "${passed[*]}" "$secs" "$off"
        exit 0
    fi
    printf '\n%stest.sh: FAIL: %s (passed: %s) in %d s%s\n' "$red" "${failed[*]}" \
        "${passed[*]:-none}" "$secs" "$off"
    exit 1
}
# step NAME CMD...: runs CMD and records NAME as passed or failed.
step() {
    local name=$1
    shift
    say "$name: $*"
    if "$@"; then
        passed+=("$name")
    else
        loud "$name failed (exit status $?)"
        failed+=("$name")
        return 1
    fi
}

# Things skiff creates on the real host and must remove again. Other runs on the same machine
# may own some of them, so only what appears during this run counts.
host_leftovers() {
    ip netns list 2>/dev/null | awk '$1 ~ /^skiff-/ {print "netns " $1}'
    local pid
    for pid in $(pgrep -x 'skiff-shim(-mon)?'); do
        echo "process $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-200)"
    done
    awk '/skiff/ {print "mount " $5}' /proc/self/mountinfo
}
before=$(host_leftovers | sort)

# shellcheck source=scripts/install-deps.sh
source scripts/install-deps.sh
step deps install_deps || summary
find_cargo || { failed+=(cargo); summary; }

# The integration tests find the binaries through CARGO_BIN_EXE_*; building them first
# separates build errors from test failures.
step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -q -- -D warnings
# Layers only point down (docs/architecture.md): no import cycle among top-level modules.
step layers sh -c 'python3 scripts/module-cycles.py src --check && python3 scripts/module-cycles.py images/src --check'
step build cargo build --workspace --bins || summary
step tests cargo test --workspace --no-fail-fast -- --test-threads=2 --include-ignored
step demo env SKIFF_PROFILE=debug bash scripts/demo.sh --no-wait
step attack bash scripts/attack.sh
fix_ownership target ${CARGO_HOME:+"$CARGO_HOME"}

say "leftovers: named netns skiff-*, skiff-shim processes, mounts mentioning skiff"
sleep 1
after=$(host_leftovers | sort)
new=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
old=$(comm -12 <(echo "$before") <(echo "$after") | sed '/^$/d')
if [[ -n $old ]]; then
    echo "present before this run too, so not counted:"
    sed 's/^/    /' <<<"$old"
fi
if [[ -n $new ]]; then
    loud "left behind by this run:"
    sed 's/^/    /' <<<"$new" >&2
    failed+=(leftovers)
else
    echo "none"
    passed+=(leftovers)
fi
summary
