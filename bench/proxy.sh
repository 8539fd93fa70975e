#!/usr/bin/env bash
# Benchmarks Redis directly against Redis behind moat, on loopback.
#
# Starts its own redis-server and moat on free ports, runs redis-benchmark
# against each in alternating order, and reports median throughput plus the
# CPU each process spent per request. See bench/README.md.
#
# Environment:
#   ROUNDS=5         rounds; each runs every test against both targets
#   N=200000         requests per redis-benchmark run
#   C=50             concurrent benchmark connections
#   PIPELINES="1 16" pipeline depths (-P) to measure
#   DIRECT_ONLY=1    skip moat (no build, no proxy): measures Redis alone
#   MOAT_BIN=PATH    benchmark this moat binary instead of building one
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-5}
N=${N:-200000}
C=${C:-50}
PIPELINES=${PIPELINES:-"1 16"}
DIRECT_ONLY=${DIRECT_ONLY:-0}
TESTS="set get"

need redis-server redis-cli redis-benchmark getconf awk sort

MOAT_BIN=${MOAT_BIN:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench.XXXXXX")
bench_traps "$work"
redis_pid=""
moat_pid=""

# run_one ROUND TARGET PIPELINE TEST: one redis-benchmark run, appended to the CSV.
run_one() {
    local round=$1 target=$2 pipeline=$3 test=$4 port out line
    local redis_before redis_after moat_before=0 moat_after=0
    if [ "$target" = direct ]; then port=$redis_port; else port=$moat_port; fi

    redis_before=$(cpu_ticks "$redis_pid")
    if [ "$target" = moat ]; then moat_before=$(cpu_ticks "$moat_pid"); fi
    # In the background plus `wait`, so that a signal runs the cleanup trap
    # at once instead of after a run that can take a minute.
    redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -n "$N" -c "$C" \
        -P "$pipeline" --csv -q >"$work/bench.out" 2>&1 &
    if ! wait "$!"; then
        cat "$work/bench.out" >&2
        die "redis-benchmark failed against $target (port $port)"
    fi
    out=$(cat "$work/bench.out")
    redis_after=$(cpu_ticks "$redis_pid")
    if [ "$target" = moat ]; then moat_after=$(cpu_ticks "$moat_pid"); fi

    # --csv prints a header, then "TEST","rps","avg_ms","min","p50","p95","p99","max".
    line=$(printf '%s\n' "$out" | awk -F'","' -v t="$(echo "$test" | tr a-z A-Z)" '
        { gsub(/"/, "", $1); gsub(/"/, "", $NF) }
        $1 == t { print $2 "," $3 "," $5 "," $7; found = 1 }
        END { if (!found) exit 1 }') ||
        {
            echo "$out" >&2
            die "cannot parse redis-benchmark output"
        }

    awk -v round="$round" -v target="$target" -v p="$pipeline" -v test="$test" \
        -v n="$N" -v c="$C" -v line="$line" -v tck="$CLK_TCK" \
        -v r0="$redis_before" -v r1="$redis_after" -v m0="$moat_before" -v m1="$moat_after" \
        -v moat="$([ "$target" = moat ] && echo 1 || echo 0)" 'BEGIN {
            split(line, f, ",")
            redis_s = (r1 - r0) / tck
            moat_s = (m1 - m0) / tck
            printf "%d,%s,%s,%d,%d,%d,%s,%s,%s,%s,%.4f,%s,%.4f,%s\n",
                round, target, toupper(test), p, n, c, f[1], f[2], f[3], f[4],
                redis_s, moat ? sprintf("%.4f", moat_s) : "",
                redis_s * 1e6 / n, moat ? sprintf("%.4f", moat_s * 1e6 / n) : ""
        }' >>"$csv"
    printf '  round %d  %-6s %-3s P%-2d %12s rps\n' "$round" "$target" \
        "$(echo "$test" | tr a-z A-Z)" "$pipeline" "${line%%,*}" >&2
}

# column FIELD TARGET TEST PIPELINE: the values of one CSV column for one cell.
column() {
    awk -F, -v col="$1" -v target="$2" -v test="$3" -v p="$4" \
        'NR > 1 && $2 == target && $3 == test && $4 == p && $col != "" { print $col }' "$csv"
}

if [ "$DIRECT_ONLY" != 1 ]; then
    build_moat
fi

mkdir -p bench/results
csv="bench/results/proxy-$(date +%Y%m%d-%H%M%S).csv"
echo "round,target,test,pipeline,requests,clients,rps,avg_latency_ms,p50_latency_ms,p99_latency_ms,redis_cpu_s,moat_cpu_s,redis_cpu_us_per_req,moat_cpu_us_per_req" >"$csv"

start_redis "$work"
redis_pid=$REDIS_PID redis_port=$REDIS_PORT
log "redis-server $(redis-server --version | awk '{ print $3 }') pid $redis_pid on 127.0.0.1:$redis_port"
targets="direct"
if [ "$DIRECT_ONLY" != 1 ]; then
    start_moat "$work/moat.log" "$redis_port"
    moat_pid=$MOAT_PID moat_port=$MOAT_PORT
    log "moat pid $moat_pid on 127.0.0.1:$moat_port -> 127.0.0.1:$redis_port"
    targets="direct moat"
fi

# A short unrecorded warm-up, so that the first measured run does not pay
# for page faults, allocator growth and CPU frequency ramp-up.
for target in $targets; do
    if [ "$target" = direct ]; then port=$redis_port; else port=$moat_port; fi
    redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n $((N / 10 + 1)) -c "$C" -q >/dev/null 2>&1 ||
        die "warm-up against $target failed"
done

log "$ROUNDS round(s), N=$N C=$C, pipelines: $PIPELINES; raw results: $csv"
for round in $(seq "$ROUNDS"); do
    # Swapping the order every other round cancels out drift (thermal,
    # background load) that would otherwise always favour one target.
    order=$targets
    if [ $((round % 2)) -eq 0 ]; then
        order=$(echo "$targets" | awk '{ for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "\n") }')
    fi
    for pipeline in $PIPELINES; do
        for target in $order; do
            for test in $TESTS; do
                run_one "$round" "$target" "$pipeline" "$test"
            done
        done
    done
done

echo
echo "moat vs direct Redis: medians over $ROUNDS round(s), N=$N, C=$C ($(nproc) CPUs)"
printf '%-4s %-4s %12s %12s %8s %14s %14s %12s\n' \
    test P rps_direct rps_moat moat/dir redis_us_dir redis_us_moat moat_us
for test in SET GET; do
    for pipeline in $PIPELINES; do
        rps_d=$(column 7 direct "$test" "$pipeline" | median %.0f)
        rps_m=$(column 7 moat "$test" "$pipeline" | median %.0f)
        cpu_d=$(column 13 direct "$test" "$pipeline" | median %.3f)
        cpu_rm=$(column 13 moat "$test" "$pipeline" | median %.3f)
        cpu_m=$(column 14 moat "$test" "$pipeline" | median %.3f)
        ratio=$(awk -v d="$rps_d" -v m="$rps_m" 'BEGIN {
            if (m == "-" || d == "-" || d == 0) print "-"; else printf "%.3f", m / d }')
        printf '%-4s P%-3s %12s %12s %8s %14s %14s %12s\n' \
            "$test" "$pipeline" "$rps_d" "$rps_m" "$ratio" "$cpu_d" "$cpu_rm" "$cpu_m"
    done
done
echo
echo "raw per-run numbers: $csv"
