#!/usr/bin/env bash
# moat beside the other ways of reaching Redis, in one run: Redis directly, moat (default
# config, release build), twemproxy (nutcracker, a pool of 2 server connections) and, when
# installed, HAProxy in TCP mode, all in front of one private redis-server on loopback.
#
# For every cell (test, pipeline depth, clients, value size) each round runs redis-benchmark
# against every target, in an order that rotates from round to round. Each run records rps,
# latency, the CPU per request of redis-server and of the proxy (from /proc/PID/stat), and the
# machine's foreign CPU over the run (busy CPU minus what our processes used): a run above
# MAX_FOREIGN cores is repeated (up to RETRIES times) and, if still noisy, kept but left out
# of the medians when the cell has quiet rounds. See bench/README.md.
#
# Environment:
#   ROUNDS=3              rounds
#   N=200000              requests per run with small values
#   N_LARGE=40000         requests per run with values of 16 KB or more
#   TESTS="set get"       redis-benchmark tests
#   PIPELINES="1 16"      pipeline depths (-P)
#   CLIENTS="50 1000"     concurrent connections (-c)
#   SIZES="3 16384"       value sizes in bytes (-d)
#   TARGETS="direct moat twemproxy haproxy"  (haproxy is skipped when not installed)
#   MAX_FOREIGN=0.3       foreign CPU (cores) above which a run counts as noisy
#   RETRIES=2             repeats of a noisy run
#   QUIET_WAIT=20         seconds to wait, before each run, for the machine to be quiet
#   QUICK=1               a smoke run of well under a minute: 1 round, N=20000, 50 clients,
#                         small values, no repeats (the knobs above still override it)
#   MOAT_BIN=PATH         benchmark this moat binary instead of building one
#   SUMMARY=FILE          only print the summary of an earlier run's CSV
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1} N=${N:-20000} CLIENTS=${CLIENTS:-50} SIZES=${SIZES:-3} RETRIES=${RETRIES:-0} QUIET_WAIT=${QUIET_WAIT:-0}
fi
ROUNDS=${ROUNDS:-3}
N=${N:-200000}
N_LARGE=${N_LARGE:-40000}
TESTS=${TESTS:-"set get"}
PIPELINES=${PIPELINES:-"1 16"}
CLIENTS=${CLIENTS:-"50 1000"}
SIZES=${SIZES:-"3 16384"}
TARGETS=${TARGETS:-"direct moat twemproxy haproxy"}
MAX_FOREIGN=${MAX_FOREIGN:-0.3}
RETRIES=${RETRIES:-2}
QUIET_WAIT=${QUIET_WAIT:-20}

# summarize CSV: per cell, the medians of each target over its quiet runs (all runs, marked
# `*`, when a cell has no quiet one), with throughput as a ratio to Redis direct.
summarize() {
    python3 - "$1" "$MAX_FOREIGN" <<'PY'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1])))
limit = float(sys.argv[2])
cells = defaultdict(lambda: defaultdict(list))
for r in rows:
    cells[(r["test"], int(r["pipeline"]), int(r["clients"]), int(r["size"]))][r["target"]].append(r)
def med(runs, key):
    v = [float(r[key]) for r in runs if r[key] != ""]
    return statistics.median(v) if v else None
fmt = lambda v, f: "-" if v is None else format(v, f)
print(f"{'cell':<22} {'target':<9} {'rps':>9} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7} "
      f"{'proxy us':>8} {'redis us':>8} {'quiet':>5} {'foreign':>7}")
for cell in sorted(cells, key=lambda c: (c[2], c[3], c[1], c[0] != "SET")):
    test, p, c, d = cell
    by_target = cells[cell]
    chosen = {}
    for t, runs in by_target.items():
        quiet = [r for r in runs if float(r["foreign_cores"]) <= limit]
        chosen[t] = (quiet or runs, len(quiet), len(runs))
    direct = med(chosen["direct"][0], "rps") if "direct" in chosen else None
    name = f"{test} P{p} c{c} {d}B"
    for t in ["direct", "moat", "twemproxy", "haproxy"]:
        if t not in chosen:
            continue
        runs, nq, n = chosen[t]
        rps = med(runs, "rps")
        ratio = rps / direct if rps and direct else None
        print(f"{name:<22} {t:<9} {fmt(rps, '.0f'):>9} {fmt(ratio, '.3f'):>8} "
              f"{fmt(med(runs, 'p50_ms'), '.3f'):>7} {fmt(med(runs, 'p99_ms'), '.3f'):>7} "
              f"{fmt(med(runs, 'proxy_us'), '.2f'):>8} {fmt(med(runs, 'redis_us'), '.2f'):>8} "
              f"{f'{nq}/{n}' + ('' if nq else '*'):>5} {fmt(med(runs, 'foreign_cores'), '.2f'):>7}")
        name = ""
PY
}

# SUMMARY=FILE: only print the table of an earlier run's CSV.
if [ -n "${SUMMARY:-}" ]; then
    summarize "$SUMMARY"
    exit 0
fi

need redis-server redis-cli redis-benchmark getconf awk sort

# twemproxy from Debian's nutcracker package, installed like scripts/install-redis.sh
# installs Redis.
install_nutcracker() {
    command -v nutcracker >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || { log "nutcracker missing and no apt-get: skipping twemproxy"; return 1; }
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "nutcracker missing, no root or sudo: skipping twemproxy"; return 1; }
        sudo=(sudo)
    fi
    log "installing nutcracker (twemproxy) with apt"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nutcracker >/dev/null
    command -v nutcracker >/dev/null 2>&1
}

targets=""
for t in $TARGETS; do
    case $t in
    direct) targets="$targets direct" ;;
    moat) build_moat && targets="$targets moat" ;;
    twemproxy) install_nutcracker && targets="$targets twemproxy" ;;
    haproxy)
        if command -v haproxy >/dev/null 2>&1; then targets="$targets haproxy"; else log "haproxy not installed: skipped"; fi
        ;;
    *) die "unknown target $t" ;;
    esac
done
targets=${targets# }
[ -n "$targets" ] || die "no target to measure"

# 1,000 clients need descriptors in every process on the path (Redis wants maxclients+32).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge 12000 ] || log "fd limit $(ulimit -n): runs with many clients may fail"

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-compare.XXXXXX")
bench_traps "$work"

start_redis "$work"
declare -A port proxy_pid
port[direct]=$REDIS_PORT
proxy_pid[direct]=""
log "redis-server $(redis-server --version | awk '{ print $3 }') pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"

for t in $targets; do
    case $t in
    moat)
        start_moat "$work/moat.log" "$REDIS_PORT"
        port[moat]=$MOAT_PORT proxy_pid[moat]=$MOAT_PID
        ;;
    twemproxy)
        p=$(pick_port)
        # An equivalent pool: every client multiplexed onto 2 server connections.
        cat >"$work/nutcracker.yml" <<YML
moat_bench:
  listen: 127.0.0.1:$p
  redis: true
  server_connections: 2
  auto_eject_hosts: false
  preconnect: true
  servers:
    - 127.0.0.1:$REDIS_PORT:1
YML
        nutcracker -c "$work/nutcracker.yml" -s "$(pick_port)" -a 127.0.0.1 \
            -o "$work/nutcracker.log" &
        proxy_pid[twemproxy]=$!
        track "$!"
        wait_pong "$p" "${proxy_pid[twemproxy]}" || { tail "$work/nutcracker.log" >&2; die "twemproxy did not start"; }
        port[twemproxy]=$p
        ;;
    haproxy)
        p=$(pick_port)
        cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend redis_in
    bind 127.0.0.1:$p
    default_backend redis_out
backend redis_out
    server redis 127.0.0.1:$REDIS_PORT
CFG
        haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
        proxy_pid[haproxy]=$!
        track "$!"
        wait_pong "$p" "${proxy_pid[haproxy]}" || { tail "$work/haproxy.log" >&2; die "haproxy did not start"; }
        port[haproxy]=$p
        ;;
    esac
    [ "$t" = direct ] || log "$t pid ${proxy_pid[$t]} on 127.0.0.1:${port[$t]}"
done

mkdir -p bench/results
csv="bench/results/compare-$(date -u +%Y%m%d-%H%M%S).csv"
echo "round,target,test,pipeline,clients,size,requests,rps,avg_ms,p50_ms,p99_ms,wall_s,redis_us,proxy_us,foreign_cores,noisy,attempt" >"$csv"

# measure TARGET TEST P C SIZE N: one redis-benchmark run; prints the CSV fields from rps on.
measure() {
    local t=$1 test=$2 p=$3 c=$4 d=$5 n=$6 ppid=${proxy_pid[$1]}
    local r0 r1 x0=0 x1=0 b0 b1 k0 k1 w0 w1 out line
    r0=$(cpu_ticks "$REDIS_PID")
    [ -z "$ppid" ] || x0=$(cpu_ticks "$ppid")
    # `times` must run in this shell (measure's own subshell), the client's parent.
    child_ticks "$work/times" >"$work/k0"
    b0=$(busy_ticks) w0=$(now_s)
    # In the background plus `wait`, so that a signal runs the cleanup trap at once.
    redis-benchmark -h 127.0.0.1 -p "${port[$t]}" -t "$test" -n "$n" -c "$c" -P "$p" -d "$d" \
        --csv -q >"$work/bench.out" 2>&1 &
    local bpid=$!
    wait "$bpid" || { cat "$work/bench.out" >&2; die "redis-benchmark failed against $t"; }
    w1=$(now_s) b1=$(busy_ticks)
    child_ticks "$work/times" >"$work/k1"
    k0=$(cat "$work/k0") k1=$(cat "$work/k1")
    r1=$(cpu_ticks "$REDIS_PID")
    [ -z "$ppid" ] || x1=$(cpu_ticks "$ppid")
    # --csv: a header, then "TEST","rps","avg_ms","min","p50","p95","p99","max".
    line=$(awk -F'","' -v t="$(echo "$test" | tr a-z A-Z)" '
        { gsub(/"/, "", $1); gsub(/"/, "", $NF) }
        $1 == t { print $2 "," $3 "," $5 "," $7; found = 1 }
        END { if (!found) exit 1 }' "$work/bench.out") ||
        { cat "$work/bench.out" >&2; die "cannot parse redis-benchmark output ($t)"; }
    awk -v line="$line" -v n="$n" -v tck="$CLK_TCK" -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" \
        -v r="$((r1 - r0))" -v x="$((x1 - x0))" -v k="$((k1 - k0))" -v b="$((b1 - b0))" \
        -v proxy="$([ -n "$ppid" ] && echo 1 || echo 0)" 'BEGIN {
            foreign = (b - r - x - k) / tck / w
            if (foreign < 0) foreign = 0
            printf "%s,%.3f,%.3f,%s,%.3f\n", line, w, r * 1e6 / tck / n,
                proxy ? sprintf("%.3f", x * 1e6 / tck / n) : "", foreign
        }'
}

# run_cell ROUND TARGET TEST P C SIZE: measures, repeating a noisy run, and appends the CSV row.
run_cell() {
    local round=$1 t=$2 test=$3 p=$4 c=$5 d=$6 n=$N attempt fields foreign noisy
    [ "$d" -lt 16384 ] || n=$N_LARGE
    for attempt in $(seq 0 "$RETRIES"); do
        wait_quiet "$MAX_FOREIGN" "$QUIET_WAIT" || true
        fields=$(measure "$t" "$test" "$p" "$c" "$d" "$n")
        foreign=${fields##*,}
        noisy=$(awk -v f="$foreign" -v m="$MAX_FOREIGN" 'BEGIN { print (f > m) ? 1 : 0 }')
        [ "$noisy" = 1 ] || break
        log "round $round $t $test P$p c$c d$d: foreign CPU $foreign cores; repeating"
    done
    echo "$round,$t,$(echo "$test" | tr a-z A-Z),$p,$c,$d,$n,$fields,$noisy,$attempt" >>"$csv"
    printf '  round %d %-9s %-3s P%-2s c%-4s d%-5s %9s rps  foreign %s%s\n' "$round" "$t" \
        "$(echo "$test" | tr a-z A-Z)" "$p" "$c" "$d" "${fields%%,*}" "$foreign" \
        "$([ "$noisy" = 1 ] && echo ' NOISY' || true)" >&2
}

# A short unrecorded warm-up: page faults, allocator growth, CPU frequency ramp-up.
for t in $targets; do
    redis-benchmark -h 127.0.0.1 -p "${port[$t]}" -t set,get -n 20000 -c 50 -q >/dev/null 2>&1 ||
        die "warm-up against $t failed"
done

log "$ROUNDS round(s); targets: $targets; tests: $TESTS; P: $PIPELINES; c: $CLIENTS; d: $SIZES"
log "raw results: $csv"
for round in $(seq "$ROUNDS"); do
    # Rotating the order cancels drift (thermal, background load) that would otherwise
    # always favour the target measured first.
    order=$(echo "$targets" | awk -v r="$round" '{ for (i = 0; i < NF; i++) printf "%s ", $(((i + r - 1) % NF) + 1) }')
    for c in $CLIENTS; do
        for d in $SIZES; do
            for p in $PIPELINES; do
                for t in $order; do
                    for test in $TESTS; do
                        run_cell "$round" "$t" "$test" "$p" "$c" "$d"
                    done
                done
            done
        done
    done
done

echo
echo "compare: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, redis $(redis-server --version | awk '{ print $3 }')," \
    "N=$N (N_LARGE=$N_LARGE), $ROUNDS round(s); medians over quiet runs (foreign CPU <= $MAX_FOREIGN cores)"
summarize "$csv"
echo
echo "raw per-run numbers: $csv"
