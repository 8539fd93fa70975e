#!/usr/bin/env bash
# Connection flood, side by side: the same flood (connect + reset, from 64 source addresses
# in 127.1.0.0/24) against moat's guard and against Redis directly. Prints connections per
# second and CPU per connection of the process taking the flood, and what Redis saw.
#
#   bash bench/flood.sh            # SECONDS=5 THREADS=2 ROUNDS=3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

bash scripts/install-redis.sh
cargo build --release -q -p moat --bin moat --example flood
MOAT=target/release/moat
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
RPID=$!; pids+=("$RPID")
MPORT=$(pick_port)
"$MOAT" proxy --admin 127.0.0.1:0 --listen "127.0.0.1:$MPORT" --backend "127.0.0.1:$RPORT" 2>"$work/moat.log" &
MPID=$!; pids+=("$MPID")
for _ in $(seq 100); do
    redis-cli -p "$MPORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done

run() { # target-port pid label
    local before after out conns
    before=$(cpu_ticks "$2")
    out=$("$FLOOD" "127.0.0.1:$1" "$SECONDS_PER_RUN" "$THREADS")
    after=$(cpu_ticks "$2")
    conns=$(echo "$out" | awk '{print $2}')
    awk -v l="$3" -v c="$conns" -v s="$SECONDS_PER_RUN" -v t="$((after - before))" -v k="$TICK" \
        'BEGIN { printf "%-14s %10.0f conn/s  cpu %5.2f cores  %6.1f us/conn\n", l, c/s, t/k/s, (t/k)*1e6/(c>0?c:1) }'
}

echo "flood: ${THREADS} threads x ${SECONDS_PER_RUN}s, 64 sources, ${ROUNDS} rounds"
for r in $(seq "$ROUNDS"); do
    run "$MPORT" "$MPID" "moat (guard)"
    run "$RPORT" "$RPID" "redis direct"
    sleep 1
done
echo "redis: $(redis-cli -p "$RPORT" info stats | grep -E 'total_connections_received|rejected_connections' | tr -d '\r' | tr '\n' ' ')"
echo "redis connected_clients now: $(redis-cli -p "$RPORT" info clients | grep connected_clients | tr -d '\r')"
