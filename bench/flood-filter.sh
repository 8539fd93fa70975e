#!/usr/bin/env bash
# moat's own CPU per refused connection attempt from a denied flood (sources 127.1.0.0/24),
# with the kernel socket filter off (moat accepts, writes its refusal line, closes) and on
# (the kernel drops the SYN; moat never sees it). Prints attempts/s, moat's CPU in cores and
# microseconds of moat CPU per attempt.
#
#   bash bench/flood-filter.sh        # SECONDS_PER_RUN=5 THREADS=2 ROUNDS=3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

bash scripts/install-redis.sh
cargo build --release -q -p moat --bin moat --example flood
MOAT=${MOAT_BIN:-target/release/moat}
FLOOD=target/release/examples/flood
TICK=$(getconf CLK_TCK)

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM


RPORT=$(pick_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --protected-mode no --logfile "$work/redis.log" --daemonize no &
pids+=("$!")

start_moat() { # socket_filter -> sets MPORT MPID
    MPORT=$(pick_port)
    APORT=$(pick_port)
    printf '[guard]\ndeny = ["127.1.0.0/24"]\n[kernel]\nsocket_filter = %s\n' "$1" >"$work/moat-$1.toml"
    "$MOAT" proxy --config "$work/moat-$1.toml" --admin "127.0.0.1:$APORT" \
        --listen "127.0.0.1:$MPORT" --backend "127.0.0.1:$RPORT" 2>"$work/moat-$1.log" &
    MPID=$!; pids+=("$MPID")
    for _ in $(seq 100); do
        redis-cli -p "$MPORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.05
    done
    sleep 1 # the filter thread polls every 250 ms
}

run() { # port pid mode label
    local before after out n
    before=$(cpu_ticks "$2")
    out=$("$FLOOD" "127.0.0.1:$1" "$SECONDS_PER_RUN" "$THREADS" 64 "$3")
    after=$(cpu_ticks "$2")
    # Attempts: completed connects, plus (syn mode) SYNs sent, plus connects that failed.
    n=$(echo "$out" | awk '{print $2 + $4}')
    awk -v l="$4" -v c="$n" -v s="$SECONDS_PER_RUN" -v t="$((after - before))" -v k="$TICK" \
        'BEGIN { printf "%-28s %9.0f attempts/s  moat cpu %5.3f cores  %7.2f us/attempt\n", l, c/s, t/k/s, (t/k)*1e6/(c>0?c:1) }'
}

start_moat false; OFF_PORT=$MPORT; OFF_PID=$MPID
start_moat true; ON_PORT=$MPORT; ON_PID=$MPID; ON_ADMIN=$APORT
echo "denied flood from 64 sources: ${THREADS} threads x ${SECONDS_PER_RUN}s, ${ROUNDS} rounds"
for _ in $(seq "$ROUNDS"); do
    run "$OFF_PORT" "$OFF_PID" connect "filter off, connect flood"
    run "$OFF_PORT" "$OFF_PID" syn "filter off, SYN flood"
    run "$ON_PORT" "$ON_PID" syn "filter on, SYN flood"
    run "$ON_PORT" "$ON_PID" connect "filter on, connect flood"
done
echo "filter on: $(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | grep -E '^moat_kernel_filter' | tr '\n' ' ')"
echo "moat (filter on) log: $(grep -ci warn "$work/moat-true.log") warnings"
