# Helpers shared by the benchmark scripts; `source` it (defines functions, runs nothing).

# median "1 3 2" -> 2 (the mean of the middle two for an even count)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ratio A B -> A/B with two decimals ("nan" when B is 0)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }

# iperf SERVER_NETNS CLIENT_NETNS SERVER_IP -> Gbit/s received, one run of $SECONDS_PER_RUN
# seconds. The server's pid goes into IPERF_PIDS (the caller's cleanup kills what is left).
iperf() {
    local port=$((5201 + RANDOM % 1000)) pid gbps
    nsenter --net="$1" iperf3 -s -1 -B "$3" -p "$port" >/dev/null 2>&1 &
    pid=$!
    IPERF_PIDS+=("$pid")
    for _ in $(seq 50); do
        nsenter --net="$1" ss -ltnH "sport = :$port" 2>/dev/null | grep -q . && break
        sleep 0.05
    done
    gbps=$(nsenter --net="$2" iperf3 -c "$3" -p "$port" -t "$SECONDS_PER_RUN" -J |
        jq '.end.sum_received.bits_per_second / 1e9')
    wait "$pid" 2>/dev/null || true
    printf '%.2f' "$gbps"
}

# iperf_alternating LABEL_A SERVER_NS_A CLIENT_NS_A SERVER_IP_A LABEL_B SERVER_NS_B CLIENT_NS_B SERVER_IP_B
# $RUNS rounds of one A run then one B run (so load drifts hit both alike), a line per round.
# Sets RUNS_A/RUNS_B (the figures, space-separated) and MEDIAN_A/MEDIAN_B.
iperf_alternating() {
    local i a b
    RUNS_A= RUNS_B=
    for i in $(seq "$RUNS"); do
        a=$(iperf "$2" "$3" "$4")
        b=$(iperf "$6" "$7" "$8")
        echo "  run $i: $1 $a Gbit/s, $5 $b Gbit/s"
        RUNS_A+=" $a" RUNS_B+=" $b"
    done
    MEDIAN_A=$(median "$RUNS_A")
    MEDIAN_B=$(median "$RUNS_B")
}

# bench_require PKG... : every Debian package a benchmark (or its peer) needs must be installed.
# Missing ones are installed through scripts/install-deps.sh's list when we can (root + apt);
# otherwise, or when that fails, the benchmark stops naming the packages. Checking packages, not
# commands, matters for podman: without its recommended catatonit (the pod's infra init) and
# netavark/aardvark-dns, `podman kube play` fails although `podman` itself is on PATH.
bench_require() {
    local missing=() pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    echo "bench: installing missing packages: ${missing[*]}" >&2
    if ((EUID == 0)) && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >/tmp/skiff-bench-apt.log 2>&1 </dev/null ||
            { apt-get update -q >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                    "${missing[@]}" >/tmp/skiff-bench-apt.log 2>&1 </dev/null; } && return 0
        tail -n 20 /tmp/skiff-bench-apt.log >&2
    fi
    echo "bench: missing Debian package(s): ${missing[*]} (sudo scripts/install-deps.sh installs them)" >&2
    exit 1
}

# bench_result MEASURE SKIFF PEER RATIO GOAL MET : one row of scripts/bench.sh's summary table,
# appended to $BENCH_RESULTS (tab-separated) when that is set; a no-op otherwise. Use "-" for
# an empty cell; MET is "yes", "no" or "-" (no goal).
bench_result() {
    [[ -n ${BENCH_RESULTS:-} ]] || return 0
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" >>"$BENCH_RESULTS"
}

# met A OP B -> "yes" when A OP B holds (OP is one of < <= >= >), else "no"; "-" for a non-number.
met() {
    awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
        if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) { print "-"; exit }
        r = (op == "<") ? a < b : (op == "<=") ? a <= b : (op == ">=") ? a >= b : a > b
        print (r ? "yes" : "no") }'
}

# bench_profile: PROFILE=release|debug picks which build of skiff a benchmark measures (release
# unless told). `bench.sh --quick` passes debug: CI has just built it, and its quick run is a
# smoke test that every benchmark still completes, not a source of figures. Sets CARGO_PROFILE
# (cargo build flags), BENCH_PROFILE (cargo bench flags) and BIN (the binaries' directory).
bench_profile() {
    PROFILE=${PROFILE:-release}
    case $PROFILE in
        release) CARGO_PROFILE=(--release) BENCH_PROFILE=() ;;
        debug) CARGO_PROFILE=() BENCH_PROFILE=(--profile dev) ;;
        *) echo "PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
    esac
    BIN=$PWD/target/$PROFILE
}
