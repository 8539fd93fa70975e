#!/usr/bin/env bash
# How fast `moat watch`, with its default thresholds and windows, sees a real connection
# flood and a real hoard (`moat attack`) against a real Redis with default settings, and how
# long after each attack its alerts resolve. A light churn of 5 connections a second plays
# the applications throughout, so the spike detector has a baseline to judge against.
#
# Prints the alert timeline (seconds from each attack's start) and keeps the raw JSON lines,
# the attacks' summaries and the dashboard's frame 10 s into each attack in $OUT.
#
#   bash bench/watch-detect.sh      # FLOOD_SECS=20 HOARD=9500 HOARD_SECS=40 SETTLE=100 OUT=dir
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh
FLOOD_SECS=${FLOOD_SECS:-20}
HOARD=${HOARD:-9500}
HOARD_SECS=${HOARD_SECS:-40}
# Long enough for the counter rules' 60 s window to empty and their alerts to resolve.
SETTLE=${SETTLE:-100}
WARMUP=${WARMUP:-45}

bash scripts/install-redis.sh
cargo build --release -q -p moat --bin moat
MOAT=${MOAT_BIN:-target/release/moat}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }

PORT=$(pick_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" \
    --protected-mode no --logfile "$OUT/redis.log" --daemonize no &
pids+=("$!")
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$MOAT" watch "redis://127.0.0.1:$PORT" --format json --clients --clients-every 5 \
    --snapshot "$OUT/frame.txt" --snapshot-size 110x34 >"$OUT/alerts.jsonl" 2>"$OUT/watch.stderr" &
pids+=("$!")
total=$((WARMUP + FLOOD_SECS + SETTLE + HOARD_SECS + SETTLE + 30))
"$MOAT" attack flood --target "127.0.0.1:$PORT" --rate 5 --duration "${total}s" --quiet \
    --json >"$OUT/churn.json" 2>/dev/null &
pids+=("$!")

echo "warming up the baseline for ${WARMUP}s..." >&2
sleep "$WARMUP"
# Keeps the dashboard's frame as it was 10 s into an attack.
keep_frame() { sleep 10; cp "$OUT/frame.txt" "$OUT/frame-$1.txt" 2>/dev/null || true; }
flood_start=$(now)
keep_frame flood &
"$MOAT" attack flood --target "127.0.0.1:$PORT" --sources 1024 --duration "${FLOOD_SECS}s" \
    --quiet --json >"$OUT/flood.json"
flood_end=$(now)
sleep "$SETTLE"
hoard_start=$(now)
keep_frame hoard &
"$MOAT" attack hoard --target "127.0.0.1:$PORT" --sources 16 --connections "$HOARD" \
    --duration "${HOARD_SECS}s" --quiet --json >"$OUT/hoard.json"
hoard_end=$(now)
sleep "$SETTLE"

python3 - "$OUT/alerts.jsonl" "$flood_start" "$flood_end" "$hoard_start" "$hoard_end" <<'PY'
import json, sys
path, fs, fe, hs, he = sys.argv[1], *map(float, sys.argv[2:])
print(f"flood: {fe - fs:.1f} s; hoard: {he - hs:.1f} s (times from each attack's start)")
print("| attack | t (s) | event | alert | severity | summary |")
print("|---|---|---|---|---|---|")
for line in open(path):
    e = json.loads(line)
    t = e["unix_time"]
    which, start = ("flood", fs) if t < hs else ("hoard", hs)
    print(f"| {which} | {t - start:+.1f} | {e['event']} | {e['id']} | {e.get('severity', '')} "
          f"| {e.get('summary', 'after ' + str(e.get('after', '')))} |")
PY
echo "raw: $OUT" >&2
