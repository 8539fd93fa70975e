#!/usr/bin/env bash
# redis-py 6.4.0's own test suite (its sdist's tests/, sync and asyncio) against a stock
# redis-server straight on, and through moat, in RESP2 and RESP3: how much of a real client's
# test suite passes through the proxy, and which tests pass on Redis but fail through moat.
#
#   bash tests/compat/redis-py.sh                         # 4 runs: direct/moat x RESP2/RESP3
#   TARGETS=moat PROTOCOLS=3 bash tests/compat/redis-py.sh
#   PYTEST_ARGS='-k test_pubsub' bash tests/compat/redis-py.sh
#   TESTS='tests/test_pubsub.py tests/test_asyncio/test_pubsub.py' bash tests/compat/redis-py.sh
#   MOAT_BIN=/path/to/moat bash tests/compat/redis-py.sh  # no cargo build
#   KEEP=1 bash tests/compat/redis-py.sh                  # keep redis/moat configs and logs
#   ISOLATE=file bash tests/compat/redis-py.sh            # fresh servers per test file (results
#                                                           under target/compat/per-file)
#   REPAIR=1 bash tests/compat/redis-py.sh                # reset a requirepass a test left set
#                                                           (results under target/compat/repaired)
#   python3 tests/compat/summarize.py                      # the table and the moat-only failures again
#
# Every run gets a fresh redis-server (and a fresh moat) on free loopback ports, stopped by PID
# after the run, so runs never see each other's data, config changes or clients. With
# ISOLATE=file every test file does: a file that leaves the server changed (through moat, the
# credentials tests leave a requirepass they cannot reset, and every later test that needs a
# new backend connection fails) then only spoils itself.
# Tests that cannot pass on a stock redis-server 7.x (modules, cluster, TLS, ...) are listed with
# their reason in tests/compat/redis-py-deselect.txt.
#
# Results under target/compat/ (target/compat/per-file/ with ISOLATE=file, .../repaired/ with
# REPAIR=1, RESULTS=DIR elsewhere):
#   junit-<target>-resp<N>.xml   one per run
#   pytest-<target>-resp<N>.log  pytest's output
#   runs.tsv                     target, protocol, seconds, pytest exit code
#   summary.txt                  counts per run, moat/direct ratio of passed tests
#   moat-only-failures.txt       tests passing straight on Redis but failing through moat,
#                                grouped by the first line of their error
#   repairs-<target>-resp<N>.txt with REPAIR=1: the tests after which requirepass was reset
# Exit code: 0 when every run ran to its end (whatever the tests said), non-zero when a server
# did not start, a run hit RUN_TIMEOUT or pytest did not produce its junit file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PROTOCOLS="${PROTOCOLS:-2 3}"
TARGETS="${TARGETS:-direct moat}"
PYTEST_ARGS="${PYTEST_ARGS:-}"
TESTS="${TESTS:-tests}"            # what pytest collects, relative to the sdist root
ISOLATE="${ISOLATE:-}"             # "file": fresh redis-server (and moat) for every test file
REPAIR="${REPAIR:-0}"              # 1: reset a requirepass a test left behind (tests/compat/compat_repair.py)
KEEP="${KEEP:-0}"
TEST_TIMEOUT="${TEST_TIMEOUT:-30}"  # seconds per test (pytest-timeout)
RUN_TIMEOUT="${RUN_TIMEOUT:-2400}"  # seconds per whole pytest run
REDIS_PY_VERSION=6.4.0

HERE="tests/compat"
OUT="$ROOT/target/compat"
VENV="$ROOT/target/compat-venv"
SRC="$OUT/redis-py-$REDIS_PY_VERSION"
SDIST="$OUT/download/redis-$REDIS_PY_VERSION.tar.gz"
# Where junit files, logs and summaries go: target/compat for the plain runs, a subfolder for
# each analysis mode so its results never overwrite the plain ones.
variant=""
[ "$ISOLATE" = file ] && variant="per-file"
[ "$REPAIR" = 1 ] && variant="${variant:+$variant-}repaired"
RESULTS="${RESULTS:-$OUT${variant:+/$variant}}"

say() { printf '[compat] %s\n' "$*"; }
die() {
    printf '[compat] %s\n' "$*" >&2
    exit 1
}

for p in $PROTOCOLS; do
    case "$p" in 2 | 3) ;; *) die "PROTOCOLS: '$p' is neither 2 nor 3" ;; esac
done
for t in $TARGETS; do
    case "$t" in direct | moat) ;; *) die "TARGETS: '$t' is neither direct nor moat" ;; esac
done
for tool in redis-server redis-cli python3 timeout sha256sum tar; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH (redis: bash scripts/install-redis.sh)"
done
case "$ISOLATE" in '' | file) ;; *) die "ISOLATE: '$ISOLATE' is neither empty nor 'file'" ;; esac
case "$REPAIR" in 0 | 1) ;; *) die "REPAIR: '$REPAIR' is neither 0 nor 1" ;; esac
mkdir -p "$OUT" "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"

# --- redis-py's sdist and a venv with its test dependencies (idempotent) -------------------

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
if [ ! -f "$SDIST" ]; then
    say "downloading the redis==$REDIS_PY_VERSION sdist"
    rm -rf "$OUT/download.tmp"
    timeout 300 "$VENV/bin/pip" download --disable-pip-version-check -q \
        --no-binary :all: --no-deps "redis==$REDIS_PY_VERSION" -d "$OUT/download.tmp"
    mkdir -p "$(dirname "$SDIST")"
    mv "$OUT/download.tmp/redis-$REDIS_PY_VERSION.tar.gz" "$SDIST"
    rm -rf "$OUT/download.tmp"
fi
if [ ! -f "$SRC/tests/conftest.py" ]; then
    say "unpacking $SDIST into $SRC"
    rm -rf "$SRC" "$OUT/unpack.tmp"
    mkdir -p "$OUT/unpack.tmp"
    tar -xzf "$SDIST" -C "$OUT/unpack.tmp"
    mv "$OUT/unpack.tmp/redis-$REDIS_PY_VERSION" "$SRC"
    rm -rf "$OUT/unpack.tmp"
fi
stamp="$VENV/.compat-requirements.sha256"
want="$( (sha256sum "$HERE/requirements.txt" "$SDIST" | cut -d' ' -f1) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing redis-py $REDIS_PY_VERSION from its sdist and $HERE/requirements.txt into $VENV"
    # One resolution: redis-entraid depends on redis, which must be the sdist, not a wheel.
    timeout 600 "$VENV/bin/pip" install --disable-pip-version-check -q \
        "$SDIST" -r "$HERE/requirements.txt"
    echo "$want" >"$stamp"
fi

# --- moat --------------------------------------------------------------------------------------

if [[ " $TARGETS " == *" moat "* ]]; then
    if [ -z "${MOAT_BIN:-}" ]; then
        MOAT_BIN="$ROOT/target/release/moat"
        say "cargo build --release -p moat"
        if ! cargo build --release -p moat >"$OUT/moat-build.log" 2>&1; then
            tail -n 60 "$OUT/moat-build.log"
            die "cargo build --release -p moat failed (log: $OUT/moat-build.log)"
        fi
    fi
    [ -x "$MOAT_BIN" ] || die "no moat binary at $MOAT_BIN"
fi

# --- what to run --------------------------------------------------------------------------------

# The tests that cannot pass on a stock redis-server are dropped by tests/compat/compat_deselect.py
# (a pytest plugin, exact node ids) from tests/compat/redis-py-deselect.txt.
DESELECT="$ROOT/$HERE/redis-py-deselect.txt"
[ -f "$DESELECT" ] || die "no $DESELECT"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

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

# Stops a process by PID: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moat-compat.XXXXXX")"
REDIS_PID=""
MOAT_PID=""
PYTEST_PID=""
stop_servers() {
    local pid
    for pid in $PYTEST_PID $MOAT_PID $REDIS_PID; do
        stop_pid "$pid"
    done
    PYTEST_PID=""
    MOAT_PID=""
    REDIS_PID=""
}
cleanup() {
    local rc=$?
    set +e
    stop_servers
    if [ "$KEEP" = 1 ]; then
        rm -rf "$RESULTS/logs"
        cp -r "$WORK" "$RESULTS/logs"
        say "logs kept in $RESULTS/logs"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis() { # $1: run name; sets RPORT, REDIS_PID
    local dir="$WORK/$1/redis"
    mkdir -p "$dir"
    RPORT="$(free_port)"
    cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $RPORT
dir $dir
save ""
appendonly no
daemonize no
logfile $dir/redis.log
enable-debug-command yes
EOF
    redis-server "$dir/redis.conf" &
    REDIS_PID=$!
    wait_pong "$RPORT" 10 || {
        tail -n 20 "$dir/redis.log" >&2 || true
        die "redis-server on 127.0.0.1:$RPORT did not answer PING within 10s"
    }
}

start_moat() { # $1: run name; sets MPORT, MOAT_PID
    local dir="$WORK/$1/moat"
    mkdir -p "$dir"
    MPORT="$(free_port)"
    # The suite opens hundreds of connections from 127.0.0.1 (trusted by default, so no rate or
    # per-address limits apply) and holds many dedicated connections at once: pub/sub clients,
    # transactions and blocking calls from one address. The pinned pool is sized so that its
    # per-address cap (8 by default) is not what a test measures. Everything else is the default.
    cat >"$dir/moat.toml" <<EOF
[proxy]
listen = "127.0.0.1:$MPORT"

[guard]
trusted = ["127.0.0.1/32", "::1/128"]
max_clients = 10000
reserved_for_trusted = 500
max_per_ip = 10000
max_per_subnet = 10000

[backend]
address = "127.0.0.1:$RPORT"

[pinned]
max_connections = 512
max_per_ip = 512
max_per_user = 512

[admin]
listen = "127.0.0.1:0"
EOF
    "$MOAT_BIN" check-config "$dir/moat.toml" >"$dir/effective.toml" 2>&1 ||
        die "moat check-config $dir/moat.toml failed: $(cat "$dir/effective.toml")"
    NO_COLOR=1 "$MOAT_BIN" proxy --config "$dir/moat.toml" 2>"$dir/moat.log" &
    MOAT_PID=$!
    wait_pong "$MPORT" 20 || {
        tail -n 20 "$dir/moat.log" >&2 || true
        die "moat on 127.0.0.1:$MPORT did not answer PING within 20s"
    }
}

# --- the runs -----------------------------------------------------------------------------------

say "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), redis-py $REDIS_PY_VERSION, $("$VENV/bin/python" -m pytest --version 2>&1)"
[ -n "${MOAT_BIN:-}" ] && say "moat: $MOAT_BIN (tree at $(git log -1 --format='%h %s' 2>/dev/null | cut -c1-70))"
say "deselect list: $DESELECT ($(grep -c '^[a-z]' "$DESELECT") entries)"

# One pytest over $1... (test paths) against a fresh redis-server, and a fresh moat for the moat
# target, stopped afterwards. Uses $target, $proto, $run; $2 junit file, $3 log file, $4 name.
# Sets rc.
pytest_once() {
    local junit=$1 log=$2 name=$3 port dead
    shift 3
    start_redis "$run/$name"
    port="$RPORT"
    if [ "$target" = moat ]; then
        start_moat "$run/$name"
        port="$MPORT"
    fi
    # A port nothing listens on: the suite's module, TLS and sentinel servers default to
    # localhost:6479/6666/26379, where another engineer's server may run.
    dead="$(free_port)"
    local repair=()
    if [ "$REPAIR" = 1 ]; then
        # Straight to Redis, never through moat.
        repair=(-p compat_repair)
        export COMPAT_REPAIR_URL="redis://127.0.0.1:$RPORT/0" COMPAT_REPAIR_LOG="$RESULTS/repairs-$run.txt"
    fi
    local args=(
        -m pytest "$@"
        "--redis-url=redis://127.0.0.1:$port/0"
        "--protocol=$proto"
        "--redis-mod-url=redis://127.0.0.1:$dead"
        "--redis-ssl-url=rediss://127.0.0.1:$dead"
        "--sentinels=127.0.0.1:$dead"
        -p compat_deselect "${repair[@]}"
        --tb=line -q -p no:cacheprovider
        "--timeout=$TEST_TIMEOUT"
        "--junitxml=$junit" -o junit_family=xunit1
    )
    set +e
    # shellcheck disable=SC2086 # PYTEST_ARGS is split into words on purpose
    (cd "$SRC" && PYTHONPATH="$ROOT/$HERE" COMPAT_DESELECT="$DESELECT" exec timeout --kill-after=30 \
        "$RUN_TIMEOUT" "$VENV/bin/python" "${args[@]}" $PYTEST_ARGS) >"$log" 2>&1 </dev/null &
    PYTEST_PID=$!
    wait "$PYTEST_PID"
    rc=$?
    PYTEST_PID=""
    set -e
    if [ "$target" = moat ] && ! kill -0 "$MOAT_PID" 2>/dev/null; then
        say "$run/$name: moat exited during the run (KEEP=1 keeps its log)"
        bad=1
    fi
    stop_servers
}

# One line per run: target, protocol, seconds, pytest exit, finish time, selection. A run replaces
# its own earlier line; other runs' lines (and junit files) stay, dated, for summarize.py.
runs_tsv="$RESULTS/runs.tsv"
touch "$runs_tsv"
bad=0
for target in $TARGETS; do
    for proto in $PROTOCOLS; do
        run="$target-resp$proto"
        junit="$RESULTS/junit-$run.xml"
        log="$RESULTS/pytest-$run.log"
        rm -f "$junit" "$log" "$RESULTS/repairs-$run.txt"
        printf '\n[compat] ===== %s =====\n' "$run"
        start=$SECONDS
        if [ "$ISOLATE" = file ]; then
            # Fresh servers for every test file: a file that leaves the server changed (a
            # requirepass it could not reset) does not decide the fate of the files after it.
            # shellcheck disable=SC2086 # TESTS is a list of paths
            mapfile -t files < <(cd "$SRC" && find $TESTS -name 'test_*.py' | sort)
            mkdir -p "$WORK/$run/junit"
            worst=0
            for i in "${!files[@]}"; do
                f="${files[$i]}"
                pytest_once "$WORK/$run/junit/$i.xml" "$WORK/$run/pytest.$i.log" "$i" "$f"
                printf '[compat] %-55s exit %s: %s\n' "$f" "$rc" "$(tail -n 1 "$WORK/$run/pytest.$i.log")"
                { echo "===== $f (exit $rc)"; cat "$WORK/$run/pytest.$i.log"; } >>"$log"
                # 5: every test of the file deselected.
                case "$rc" in 0 | 1 | 5) ;; *) worst=$rc ;; esac
            done
            rc=$worst
            "$VENV/bin/python" - "$junit" "$WORK/$run/junit"/*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
out = ET.Element("testsuites")
for path in sys.argv[2:]:
    root = ET.parse(path).getroot()
    out.extend(root.iter("testsuite") if root.tag == "testsuites" else [root])
ET.ElementTree(out).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
PY
        else
            # shellcheck disable=SC2086 # TESTS is a list of paths
            pytest_once "$junit" "$log" all $TESTS
            tail -n 1 "$log"
        fi
        took=$((SECONDS - start))
        awk -F'\t' -v t="$target" -v p="$proto" '!($1 == t && $2 == p)' "$runs_tsv" >"$runs_tsv.tmp"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$proto" "$took" "$rc" \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(echo $TESTS $PYTEST_ARGS)${variant:+ ($variant)}" \
            >>"$runs_tsv.tmp"
        mv "$runs_tsv.tmp" "$runs_tsv"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            say "$run: pytest hit RUN_TIMEOUT=${RUN_TIMEOUT}s (log: $log)"
            bad=1
        elif [ ! -s "$junit" ]; then
            say "$run: pytest exited $rc without writing $junit (log: $log)"
            bad=1
        else
            say "$run: done in ${took}s (pytest exit $rc)"
        fi
    done
done

echo
"$VENV/bin/python" "$HERE/summarize.py" --out "$RESULTS"
exit "$bad"
