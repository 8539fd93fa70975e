#!/usr/bin/env bash
# Real client libraries, unmodified, against moat: redis-py, an RQ worker, node-redis,
# ioredis and the Rust redis crate each run one scenario (handshake, pipeline,
# WATCH/MULTI/EXEC, BLPOP, pub/sub, SELECT, RESP3) against a moat proxy in
# front of a redis-server that this script starts on free loopback ports.
#
#   bash tests/clients/run.sh                  # through moat
#   TARGET=direct bash tests/clients/run.sh    # straight against Redis (checks the scenarios)
#   CLIENTS="python rust" bash tests/clients/run.sh   # a subset
#   KEEP_GOING=1 bash tests/clients/run.sh     # scenarios run every step, not stop at the first failure
#   MOAT_BIN=/path/to/moat bash tests/clients/run.sh   # a moat built elsewhere (no cargo build of moat)
#
# Installs what it needs idempotently: a venv under target/clients-venv
# (tests/clients/python/requirements.txt) and `npm ci` in tests/clients/node.
# Every wait is bounded; a hung client fails its scenario after SCENARIO_TIMEOUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

TARGET="${TARGET:-moat}"
CLIENTS="${CLIENTS:-python rq node-redis ioredis rust}"
SCENARIO_TIMEOUT="${SCENARIO_TIMEOUT:-60}"
HERE="tests/clients"
VENV="$ROOT/target/clients-venv"

case "$TARGET" in
    moat | direct) ;;
    *)
        echo "run.sh: TARGET must be 'moat' or 'direct', not '$TARGET'" >&2
        exit 2
        ;;
esac

say() { printf '[clients] %s\n' "$*"; }

# A clean Debian machine may lack Node.js or Python's venv: install them with apt, like
# scripts/install-redis.sh does for Redis.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    say "installing $* with apt"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi

for tool in redis-server redis-cli python3 node npm cargo timeout; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run.sh: '$tool' is not on PATH (redis: bash scripts/install-redis.sh)" >&2
        exit 1
    fi
done

# --- dependencies (idempotent: redone only when the pinned files change) ----

wanted() { case " $CLIENTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if wanted python || wanted rq; then
    stamp="$VENV/.requirements.sha256"
    want="$(sha256sum "$HERE/python/requirements.txt" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "python: creating $VENV and installing $HERE/python/requirements.txt"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        timeout 300 "$VENV/bin/pip" install --disable-pip-version-check -q \
            -r "$HERE/python/requirements.txt"
        echo "$want" >"$stamp"
    fi
fi

if wanted node-redis || wanted ioredis; then
    stamp="$HERE/node/node_modules/.moat-lock.sha256"
    want="$(sha256sum "$HERE/node/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "node: npm ci in $HERE/node"
        (cd "$HERE/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" >"$stamp"
    fi
fi

MOAT_BIN="${MOAT_BIN:-target/debug/moat}"
build=()
[ "$MOAT_BIN" = target/debug/moat ] && build+=(-p moat)
wanted rust && build+=(-p moat-client-scenarios)
if [ "${#build[@]}" -gt 0 ]; then
    say "cargo build ${build[*]}"
    # Output shown on failure only: warnings from work in progress elsewhere are noise here.
    mkdir -p target
    if ! cargo build "${build[@]}" >target/clients-build.log 2>&1; then
        tail -n 60 target/clients-build.log
        say "cargo build ${build[*]} failed (full log: target/clients-build.log)"
        exit 1
    fi
fi
[ -x "$MOAT_BIN" ] || { echo "run.sh: no moat binary at $MOAT_BIN" >&2; exit 1; }

# --- redis-server and moat on free loopback ports -------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moat-clients.XXXXXX")"
REDIS_PID=""
MOAT_PID=""
cleanup() {
    local rc=$? pid
    set +e
    for pid in $MOAT_PID $REDIS_PID; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $2 seconds for `redis-cli -p $1 ping` to answer PONG.
wait_pong() {
    local port=$1 deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

show_logs() {
    if [ "$TARGET" = moat ] && [ -f "$WORK/moat.log" ]; then
        echo "----- moat stderr ($WORK/moat.log, last 60 lines) -----"
        tail -n 60 "$WORK/moat.log"
    fi
    echo "----- redis-server log (last 20 lines) -----"
    tail -n 20 "$WORK/redis.log" 2>/dev/null || true
    echo "-----"
}

RPORT="$(free_port)"
cat >"$WORK/redis.conf" <<EOF
bind 127.0.0.1
port $RPORT
dir $WORK
save ""
appendonly no
daemonize no
logfile $WORK/redis.log
databases 16
EOF
redis-server "$WORK/redis.conf" &
REDIS_PID=$!
if ! wait_pong "$RPORT" 10; then
    say "redis-server on 127.0.0.1:$RPORT did not answer PING within 10s"
    show_logs
    exit 1
fi
say "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$RPORT"

if [ "$TARGET" = moat ]; then
    PORT="$(free_port)"
    NO_COLOR=1 "$MOAT_BIN" proxy --admin 127.0.0.1:0 --listen "127.0.0.1:$PORT" --backend "127.0.0.1:$RPORT" \
        2>"$WORK/moat.log" &
    MOAT_PID=$!
    if ! wait_pong "$PORT" 20; then
        say "moat on 127.0.0.1:$PORT did not answer PING within 20s"
        show_logs
        exit 1
    fi
    say "moat $MOAT_BIN (tree at $(git log -1 --format='%h %s' 2>/dev/null | cut -c1-60)) on 127.0.0.1:$PORT"
else
    PORT="$RPORT"
    say "TARGET=direct: scenarios talk to redis-server itself"
fi
ADDR="127.0.0.1:$PORT"

# --- scenarios -------------------------------------------------------------

scenario_cmd() {
    case "$1" in
        python) echo "$VENV/bin/python $HERE/python/scenario.py $ADDR" ;;
        rq) echo "$VENV/bin/python $HERE/python/rq_scenario.py $ADDR" ;;
        node-redis) echo "node $HERE/node/node_redis.mjs $ADDR" ;;
        ioredis) echo "node $HERE/node/ioredis.mjs $ADDR" ;;
        rust) echo "target/debug/moat-client-scenarios $ADDR" ;;
        *) return 1 ;;
    esac
}

passed=0
failed=0
results=()
for client in $CLIENTS; do
    if ! cmd="$(scenario_cmd "$client")"; then
        echo "run.sh: unknown client '$client' (python rq node-redis ioredis rust)" >&2
        exit 2
    fi
    # Each scenario starts from an empty server.
    timeout 5 redis-cli -h 127.0.0.1 -p "$RPORT" flushall >/dev/null
    printf '\n[clients] ===== %s (%s) =====\n' "$client" "$TARGET"
    start=$SECONDS
    set +e
    # shellcheck disable=SC2086 # word splitting of the command is intended
    timeout --kill-after=5 "$SCENARIO_TIMEOUT" $cmd
    rc=$?
    set -e
    took=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        results+=("PASS $client (${took}s)")
    else
        failed=$((failed + 1))
        why="exit $rc"
        [ "$rc" -eq 124 ] && why="timed out after ${SCENARIO_TIMEOUT}s"
        results+=("FAIL $client ($why)")
    fi
    if [ -n "$MOAT_PID" ] && ! kill -0 "$MOAT_PID" 2>/dev/null; then
        results+=("FAIL moat exited during the $client scenario")
        failed=$((failed + 1))
        MOAT_PID=""
        break
    fi
done

echo
say "results through $TARGET ($ADDR):"
for line in "${results[@]}"; do
    echo "  $line"
done
if [ "$failed" -ne 0 ]; then
    show_logs
fi
echo "clients: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
