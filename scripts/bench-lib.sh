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
