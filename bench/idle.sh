#!/usr/bin/env bash
# What an idle client costs in memory: N client connections from several 127.0.x.y
# addresses, held idle, against moat, against twemproxy (2 server connections) and against
# Redis directly, in turn. For each, the RSS of the process the clients talk to before they
# connect, once each has run one PING, once each has also run one pipeline of PIPELINE GETs
# (are the buffers given back?), and after they all closed; per client = growth / N.
#
# moat runs with its defaults except that 127.0.0.0/8 is trusted and max_clients and
# high_water are raised to 20,000, so the guard's per-address limits and shedding let N
# clients in from a handful of addresses (trusted clients have no idle timeout either).
#
# Environment:
#   N=7000          idle clients (up to 19,000 within a 20,000 fd limit)
#   SOURCES=8       source addresses the clients are spread over
#   PIPELINE=100    commands in each client's one pipeline
#   VALUE=64        bytes of the value each pipelined GET returns
#   TARGETS="moat twemproxy direct"
#   MOAT_BIN=PATH   measure this moat binary instead of building one
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

N=${N:-7000}
SOURCES=${SOURCES:-8}
PIPELINE=${PIPELINE:-100}
VALUE=${VALUE:-64}
TARGETS=${TARGETS:-"moat twemproxy direct"}

need redis-server redis-cli python3 awk
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((N + 200)) ] || die "fd limit $(ulimit -n) is too low for N=$N"

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-idle.XXXXXX")
bench_traps "$work"

case " $TARGETS " in *" moat "*) build_moat ;; esac
case " $TARGETS " in *" twemproxy "*) command -v nutcracker >/dev/null 2>&1 ||
    die "nutcracker not installed (bench/compare.sh installs it, or: apt-get install nutcracker)" ;; esac

start_redis "$work" --maxclients $((N + 100))
log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"

# start TARGET: starts TARGET in front of Redis; sets PORT and PID.
start() {
    case $1 in
    direct) PORT=$REDIS_PORT PID=$REDIS_PID ;;
    moat)
        cat >"$work/moat.toml" <<TOML
[guard]
trusted = ["127.0.0.0/8", "::1/128"]
max_clients = 20000
high_water = 20000
TOML
        start_moat "$work/moat.log" "$REDIS_PORT" --config "$work/moat.toml"
        PORT=$MOAT_PORT PID=$MOAT_PID
        ;;
    twemproxy)
        PORT=$(pick_port)
        cat >"$work/nutcracker.yml" <<YML
moat_bench:
  listen: 127.0.0.1:$PORT
  redis: true
  server_connections: 2
  auto_eject_hosts: false
  preconnect: true
  servers:
    - 127.0.0.1:$REDIS_PORT:1
YML
        nutcracker -c "$work/nutcracker.yml" -s "$(pick_port)" -a 127.0.0.1 -o "$work/nutcracker.log" &
        PID=$!
        track "$PID"
        wait_pong "$PORT" "$PID" || { tail "$work/nutcracker.log" >&2; die "twemproxy did not start"; }
        ;;
    *) die "unknown target $1" ;;
    esac
}

results="$work/results"
: >"$results"
for t in $TARGETS; do
    start "$t"
    log "$t: pid $PID on 127.0.0.1:$PORT; $N clients from $SOURCES addresses"
    # Bounded: every phase of the holder has its own deadline; this caps the whole.
    timeout 600 python3 bench/idle-clients.py "$PORT" "$PID" "$N" "$SOURCES" "$PIPELINE" "$VALUE" |
        sed "s/^/$t /" | tee -a "$results" >&2
    [ "$t" = direct ] || stop_pid "$PID"
done

echo
echo "idle: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, N=$N clients from $SOURCES addresses," \
    "pipeline of $PIPELINE GETs of $VALUE B each"
awk -v n="$N" '
    { rss[$1, $2] = $3; if (!seen[$1]++) order[++k] = $1 }
    END {
        printf "%-10s %12s %14s %14s %16s %14s\n", "target", "RSS before", "B/client idle",
            "B/client piped", "piped MiB total", "closed: MiB"
        for (i = 1; i <= k; i++) {
            t = order[i]; b = rss[t, "before"]
            printf "%-10s %9.1f MiB %14.0f %14.0f %16.1f %+13.1f\n", t, b / 1024,
                (rss[t, "pinged"] - b) * 1024 / n, (rss[t, "pipelined"] - b) * 1024 / n,
                (rss[t, "pipelined"] - b) / 1024, (rss[t, "closed"] - b) / 1024
        }
    }' "$results"
