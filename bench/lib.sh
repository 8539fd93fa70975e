# Helpers shared by the bench/ scripts; source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Free loopback ports, waiting for PONG, CPU time from /proc, medians, the machine's CPU use
# by others (so noisy runs can be discarded), and processes stopped by PID on exit.
# Requires bash; the sourcing script keeps `set -euo pipefail`.

BENCH_NAME=${BENCH_NAME:-$(basename "$0")}
CLK_TCK=$(getconf CLK_TCK)

log() { printf '==> %s\n' "$*" >&2; }

die() {
    echo "$BENCH_NAME: $*" >&2
    exit 1
}

# need TOOL...: exits with a hint when a tool is missing.
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "$tool not found (redis tools: bash scripts/install-redis.sh)"
    done
}

# A port below Linux's default ephemeral range (32768+), so it cannot collide with the
# benchmark's own client sockets, that nobody answers on.
pick_port() {
    local port
    for _ in $(seq 100); do
        port=$((10000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# wait_pong PORT PID: waits until `redis-cli -p PORT ping` answers PONG while PID is alive.
wait_pong() {
    local port=$1 pid=$2
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = "PONG" ]; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# cpu_ticks PID: utime + stime of PID (all threads), in clock ticks.
cpu_ticks() {
    # Strip up to the last ')' since the command name may contain spaces; utime and stime
    # are then fields 12 and 13.
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# rss_kib PID: resident set size of PID, in KiB.
rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# busy_ticks: CPU ticks the whole machine spent busy (every core; user, nice, system, steal)
# since boot. Minus what the processes a script measures used over the same interval, it is
# the foreign load that makes a run noisy. irq and softirq time are left out: loopback
# traffic is mostly softirq work that the kernel charges to no process, so our own runs
# would count as foreign.
busy_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $9; exit }' /proc/stat
}

# wait_quiet MAX_CORES SECONDS: waits (up to SECONDS) until the machine's busy CPU over half
# a second is at most MAX_CORES, so a run starts when colleagues' compilers pause. Call it
# while the measured processes are idle: all busy CPU then counts as foreign. Returns 1 on
# timeout (the caller measures anyway and marks the run by its foreign CPU).
wait_quiet() {
    local max=$1 limit=$2 b0 b1 start=$SECONDS
    while :; do
        b0=$(busy_ticks)
        sleep 0.5
        b1=$(busy_ticks)
        awk -v d="$((b1 - b0))" -v t="$CLK_TCK" -v m="$max" 'BEGIN { exit !(d / t / 0.5 <= m) }' &&
            return 0
        [ $((SECONDS - start)) -lt "$limit" ] || return 1
    done
}

# child_ticks FILE: prints the CPU ticks used so far by the calling shell's waited-for
# children (from `times`), to count a benchmark client's CPU as ours. Call it as a plain
# command, not in `$(...)` or a pipeline: a subshell has children of its own. FILE is scratch.
child_ticks() {
    times >"$1"
    awk -v t="$CLK_TCK" 'NR == 2 {
        s = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
        printf "%d\n", s * t + 0.5 }' "$1"
}

# now_s: wall time in seconds, fractional.
now_s() { date +%s.%N; }

# median FORMAT: the median of the numbers on stdin, or "-" if there are none.
median() {
    sort -g | awk -v fmt="$1" '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf fmt "\n", m
        }'
}

# Processes to stop on exit, by PID: `track PID` after starting one in the background.
BENCH_PIDS=()
track() { BENCH_PIDS+=("$1"); }

# stop_pid PID: stops one process (CONT first, in case something left it stopped) and reaps it.
stop_pid() {
    kill -CONT "$1" 2>/dev/null || true
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# stop_tracked: stops every tracked process, newest first.
stop_tracked() {
    local i
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        kill -CONT "${BENCH_PIDS[i]}" 2>/dev/null || true
        kill -TERM "${BENCH_PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        wait "${BENCH_PIDS[i]}" 2>/dev/null || true
    done
    BENCH_PIDS=()
}

# bench_traps DIR: on exit, stops the tracked processes and removes DIR (a temp dir); Ctrl-C
# and TERM exit through it.
bench_traps() {
    BENCH_WORK=$1
    trap 'stop_tracked; rm -rf "$BENCH_WORK"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# start_redis DIR [ARGS...]: starts a private redis-server (no persistence) on a free port,
# retrying on a port race; sets REDIS_PORT and REDIS_PID.
start_redis() {
    local dir=$1 attempt
    shift
    for attempt in 1 2 3 4 5; do
        REDIS_PORT=$(pick_port)
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --protected-mode no --dir "$dir" --logfile "$dir/redis.log" --daemonize no "$@" \
            >/dev/null 2>&1 &
        REDIS_PID=$!
        if wait_pong "$REDIS_PORT" "$REDIS_PID"; then
            track "$REDIS_PID"
            return 0
        fi
        kill -KILL "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        log "redis-server attempt $attempt on port $REDIS_PORT failed; retrying"
    done
    tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
    die "redis-server did not start"
}

# start_moat LOG BACKEND_PORT [ARGS...]: starts MOAT_BIN's proxy with its default config on a
# free port in front of BACKEND_PORT; sets MOAT_PORT and MOAT_PID.
start_moat() {
    local logfile=$1 backend=$2 attempt
    shift 2
    for attempt in 1 2 3 4 5; do
        MOAT_PORT=$(pick_port)
        "$MOAT_BIN" proxy --admin 127.0.0.1:0 --listen "127.0.0.1:$MOAT_PORT" \
            --backend "127.0.0.1:$backend" "$@" >"$logfile" 2>&1 &
        MOAT_PID=$!
        if wait_pong "$MOAT_PORT" "$MOAT_PID"; then
            track "$MOAT_PID"
            return 0
        fi
        kill -KILL "$MOAT_PID" 2>/dev/null || true
        wait "$MOAT_PID" 2>/dev/null || true
        log "moat attempt $attempt on port $MOAT_PORT failed; retrying"
    done
    tail -n 20 "$logfile" >&2 || true
    die "moat did not start (or does not relay PING to redis)"
}

# build_moat: sets MOAT_BIN, building target/release/moat unless MOAT_BIN is given.
build_moat() {
    if [ -z "${MOAT_BIN:-}" ]; then
        log "cargo build --release -p moat"
        cargo build --release -q -p moat --bin moat
        MOAT_BIN=target/release/moat
    fi
    [ -x "$MOAT_BIN" ] || die "$MOAT_BIN is not an executable"
}
