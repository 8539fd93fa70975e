#!/usr/bin/env bash
# What watching moat costs: CPU per /metrics scrape, and proxied request latency with a
# Prometheus-like scraper (one scrape a second) against without, measured side by side.
#
# Starts its own redis-server and moat (with its admin listener) on free loopback ports.
# Each round runs redis-benchmark through moat twice, once with a scraper and once without,
# in alternating order; medians over rounds are printed. CPU per scrape is moat's CPU time
# over SCRAPES back-to-back scrapes while the benchmark is not running, minus what moat spends
# idle over the same wall time.
#
# Environment:
#   ROUNDS=5      rounds (each: with and without the scraper)
#   N=200000      requests per redis-benchmark run
#   C=50          concurrent benchmark connections
#   P=1           pipeline depth
#   SCRAPES=500   back-to-back scrapes for the CPU-per-scrape figure
#   INTERVAL=1    seconds between scrapes during the benchmark
#   MOAT_BIN=PATH benchmark this moat binary instead of building one
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-5}
N=${N:-200000}
C=${C:-50}
P=${P:-1}
SCRAPES=${SCRAPES:-500}
INTERVAL=${INTERVAL:-1}
MOAT_BIN=${MOAT_BIN:-}

need redis-server redis-cli redis-benchmark curl getconf awk sort

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-scrape.XXXXXX")
redis_pid="" moat_pid="" scraper_pid="" bench_pid=""
cleanup() {
    local pid
    for pid in $scraper_pid $bench_pid $moat_pid $redis_pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $scraper_pid $bench_pid $moat_pid $redis_pid; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_moat
start_redis "$work"
redis_pid=$REDIS_PID redis_port=$REDIS_PORT

moat_port=$(pick_port)
admin_port=$(pick_port)
"$MOAT_BIN" proxy --listen "127.0.0.1:$moat_port" --backend "127.0.0.1:$redis_port" \
    --admin "127.0.0.1:$admin_port" >"$work/moat.log" 2>&1 &
moat_pid=$!
wait_pong "$moat_port" "$moat_pid" || { tail "$work/moat.log" >&2; die "moat did not start"; }
metrics_url="http://127.0.0.1:$admin_port/metrics"
for _ in $(seq 100); do
    curl -fsS -o /dev/null "$metrics_url" 2>/dev/null && break
    sleep 0.05
done
curl -fsS -o "$work/metrics.txt" "$metrics_url" || die "no /metrics at $metrics_url"
log "redis pid $redis_pid :$redis_port, moat pid $moat_pid :$moat_port, admin :$admin_port"
log "/metrics: $(wc -c <"$work/metrics.txt") bytes, $(grep -vc '^#' "$work/metrics.txt") samples"

# Warm-up, so the first measured run does not pay for page faults and allocator growth.
redis-benchmark -h 127.0.0.1 -p "$moat_port" -t set,get -n $((N / 10 + 1)) -c "$C" -q >/dev/null 2>&1

# CPU per scrape: SCRAPES back-to-back scrapes (one curl process, keep-alive), against the
# same wall time idle.
urls=$(for _ in $(seq "$SCRAPES"); do printf 'url = "%s"\noutput = /dev/null\n' "$metrics_url"; done)
t0=$(date +%s.%N); c0=$(cpu_ticks "$moat_pid")
printf '%s\n' "$urls" | curl -fsS -K - >/dev/null
t1=$(date +%s.%N); c1=$(cpu_ticks "$moat_pid")
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
c2=$(cpu_ticks "$moat_pid"); sleep "$wall"; c3=$(cpu_ticks "$moat_pid")
per_scrape_us=$(awk -v s="$SCRAPES" -v busy=$((c1 - c0)) -v idle=$((c3 - c2)) -v t="$CLK_TCK" \
    'BEGIN { printf "%.0f", (busy - idle) / t / s * 1e6 }')
scrape_ms=$(awk -v w="$wall" -v s="$SCRAPES" 'BEGIN { printf "%.3f", w / s * 1000 }')

scraper() {
    while :; do
        curl -fsS -o /dev/null "$metrics_url" || true
        sleep "$INTERVAL"
    done
}

csv="$work/runs.csv"
run_one() { # ROUND MODE
    local out line
    if [ "$2" = scraped ]; then scraper & scraper_pid=$!; fi
    redis-benchmark -h 127.0.0.1 -p "$moat_port" -t get -n "$N" -c "$C" -P "$P" --csv -q \
        >"$work/bench.out" 2>&1 &
    bench_pid=$!
    wait "$bench_pid" || { cat "$work/bench.out" >&2; die "redis-benchmark failed"; }
    bench_pid=""
    if [ -n "$scraper_pid" ]; then kill "$scraper_pid" 2>/dev/null; wait "$scraper_pid" 2>/dev/null || true; scraper_pid=""; fi
    # "GET","rps","avg","min","p50","p95","p99","max"
    line=$(awk -F'","' '{ gsub(/"/, "", $1); gsub(/"/, "", $NF) } $1 == "GET" { print $2 "," $5 "," $7 }' "$work/bench.out")
    [ -n "$line" ] || { cat "$work/bench.out" >&2; die "cannot parse redis-benchmark output"; }
    echo "$1,$2,$line" >>"$csv"
    printf '  round %d %-9s rps %s p50 %s ms p99 %s ms\n' "$1" "$2" $(echo "$line" | tr , ' ') >&2
}

log "$ROUNDS rounds, GET N=$N C=$C P=$P, scraper every ${INTERVAL}s"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="plain scraped"; else order="scraped plain"; fi
    for mode in $order; do run_one "$round" "$mode"; done
done

col() { awk -F, -v m="$1" -v c="$2" '$2 == m { print $c }' "$csv"; }
echo
echo "scrape cost: $SCRAPES back-to-back scrapes of $(wc -c <"$work/metrics.txt") bytes:" \
    "moat CPU ${per_scrape_us} us per scrape, ${scrape_ms} ms per scrape (wall, curl included)"
printf '%-9s %10s %10s %10s\n' mode rps p50_ms p99_ms
for mode in plain scraped; do
    printf '%-9s %10s %10s %10s\n' "$mode" "$(col "$mode" 3 | median %.0f)" \
        "$(col "$mode" 4 | median %.3f)" "$(col "$mode" 5 | median %.3f)"
done
echo "(medians over $ROUNDS rounds, $(nproc) CPUs; plain = no scraper)"
