#!/usr/bin/env bash
# Every benchmark in one run, with one summary table: measure, skiff, peer, ratio, goal, met.
#
# Usage: sudo scripts/bench.sh [--quick]     (from anywhere; a fresh Debian machine is fine)
#
#   (default)  the full figures the README quotes: 20 single pod starts, 50 pods at once,
#              5 x 5 s iperf3 runs, the proxy at 1k/5k/10k Services, a 10-host overlay lab,
#              dnsperf against the cluster DNS with 1000 Services, a Deployment of 100 replicas
#              (apply, rolling update) next to 100 static pods, and the HPA's reaction time
#   --quick    the same benchmarks with small sizes on the debug build, a few minutes on 2 cores;
#              CI runs it as a smoke test that every benchmark still runs to completion (no
#              thresholds asserted, no figures to quote)
#
# It installs what the benchmarks and their peers need (scripts/install-deps.sh), builds skiff
# once (release; debug with --quick), then runs
# scripts/bench-{pod-start,network,proxy,overlay,pull,dns,workloads}.sh one after the other; each
# prints its own report (kept in target/bench/<name>.log) and adds its headline figures to the
# table. A benchmark that fails shows its own last lines and a FAILED row; the
# others still run. The table goes to the terminal and to target/bench/summary.md (with the date,
# machine, kernel and load), ready to paste into the README.
# Exit status: 0 when every benchmark ran to completion (goals missed or not), 1 otherwise.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

quick=0
case "${1:-}" in
    --quick) quick=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench.sh: unknown argument $1 (usage: sudo scripts/bench.sh [--quick])" >&2
        exit 2
        ;;
esac
if ((EUID != 0)); then
    echo "bench.sh: must run as root (sudo $0): the benchmarks use network namespaces and mounts" >&2
    exit 1
fi

# shellcheck source=scripts/install-deps.sh
source scripts/install-deps.sh
install_deps || exit 1
find_cargo || exit 1

mkdir -p target/bench
RESULTS=$(mktemp /tmp/skiff-bench-results.XXXXXX)
trap 'rm -f "$RESULTS"' EXIT
export BENCH_RESULTS=$RESULTS
start=$SECONDS

# --quick measures the debug build (CI has just built it; a release build would add minutes to a
# run whose figures nobody reads); the full run measures the release build.
if ((quick)); then export PROFILE=debug; else export PROFILE=release; fi
echo "==> building skiff ($PROFILE)"
if ! cargo build $( [[ $PROFILE == release ]] && echo --release) --workspace --bins -q; then
    echo "bench.sh: the $PROFILE build failed" >&2
    exit 1
fi

# The load when the first benchmark starts (the build before it loads the machine by itself).
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
failed=()
# run NAME ENV=VALUE... -- SCRIPT: one benchmark with its knobs, output to the terminal and to
# target/bench/NAME.log; on failure a FAILED row that names the log.
run() {
    local name=$1 envs=()
    shift
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    echo
    echo "==> $name: ${envs[*]} $*"
    local t0=$SECONDS
    if env "${envs[@]}" bash "$@" 2>&1 | tee "target/bench/$name.log"; then
        echo "($name took $((SECONDS - t0)) s)"
    else
        echo "!!! $name failed after $((SECONDS - t0)) s; its last lines:" >&2
        tail -n 15 "target/bench/$name.log" | sed 's/^/    /' >&2
        printf '%s\tFAILED (target/bench/%s.log)\t-\t-\t-\tno\n' "$name" "$name" >>"$RESULTS"
        failed+=("$name")
    fi
}

if ((quick)); then
    run pod-start SINGLE_RUNS=5 BURST=20 PODMAN_RUNS=3 PODMAN_NET_RUNS=3 RUNC_RUNS=5 -- scripts/bench-pod-start.sh
    run network RUNS=1 SECONDS_PER_RUN=2 -- scripts/bench-network.sh
    run proxy SKIFF_BENCH_SIZES=1000 -- scripts/bench-proxy.sh
    run overlay RUNS=1 SECONDS_PER_RUN=2 HOSTS=3 -- scripts/bench-overlay.sh
    run pull -- scripts/bench-pull.sh
    run dns SERVICES=100 NAMES=100 RUNS=1 SECONDS_PER_RUN=2 LATENCY_QPS=2000 -- scripts/bench-dns.sh
    run workloads REPLICAS=10 RUNS=1 HPA_RUNS=1 -- scripts/bench-workloads.sh
else
    run pod-start -- scripts/bench-pod-start.sh
    run network -- scripts/bench-network.sh
    run proxy -- scripts/bench-proxy.sh
    run overlay -- scripts/bench-overlay.sh
    run pull -- scripts/bench-pull.sh
    run dns -- scripts/bench-dns.sh
    run workloads -- scripts/bench-workloads.sh
fi
fix_ownership target ${CARGO_HOME:+"$CARGO_HOME"}

# ---- the table -------------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
header="$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) x ${cpu:-unknown CPU}, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), $(iptables --version 2>/dev/null | head -1), load $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end$( ((quick)) && echo ', --quick')"
{
    echo "Benchmarks: $header"
    echo
    echo "| measure | skiff | peer | ratio | goal | met |"
    echo "|---|---|---|---|---|---|"
    while IFS=$'\t' read -r measure skiff peer ratio goal ok; do
        echo "| $measure | $skiff | $peer | $ratio | $goal | $ok |"
    done <"$RESULTS"
} >target/bench/summary.md
echo
echo "==> summary ($((SECONDS - start)) s; also in target/bench/summary.md)"
cat target/bench/summary.md
if ((${#failed[@]})); then
    echo "bench.sh: FAILED to complete: ${failed[*]}" >&2
    exit 1
fi
echo "bench.sh: all benchmarks ran to completion"
