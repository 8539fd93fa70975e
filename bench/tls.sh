#!/usr/bin/env bash
# What TLS costs moat (release build), on both sides at once: clients to moat over TLS
# (`proxy.tls_listen`) and moat to Redis over TLS (`[backend.tls]`, Redis's tls-port), against
# the same moat and Redis in plain TCP.
#
# 1. Handshakes: redis-benchmark `-k 0` (a new connection per request: connect, handshake,
#    PING, close) with HS_CLIENTS clients for HS_N connections, on the plain and the TLS
#    listener; moat's CPU per connection (utime+stime from /proc/PID/stat) and connections/s.
#    The TLS figure minus the plain one is the handshake's own cost. Certificates: ECDSA
#    P-256 (openssl), TLS 1.3, no session resumption (redis-benchmark does not resume).
# 2. Throughput at `-P 1`: `-t set,get -n N -c 50`, plain moat vs TLS moat (TLS both sides),
#    alternated for ROUNDS rounds; medians of rps and of moat's CPU per request.
#
# Environment: ROUNDS=3, N=100000, HS_N=5000, HS_CLIENTS=10, MOAT_BIN=PATH (else built).
# Prints a summary; the raw CSV lines go to $OUT (default bench/results/tls-<date>.txt).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
N=${N:-100000}
HS_N=${HS_N:-5000}
HS_CLIENTS=${HS_CLIENTS:-10}
mkdir -p bench/results
OUT=${OUT:-bench/results/tls-$(date -u +%Y%m%dT%H%M%SZ).txt}

need redis-server redis-benchmark redis-cli openssl
build_moat
WORK=$(mktemp -d)
bench_traps "$WORK"

# Certificates: a CA, and one ECDSA P-256 leaf for 127.0.0.1 used by Redis and moat alike.
log "certificates (ECDSA P-256)"
(
    cd "$WORK"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -days 2 -subj /CN=bench-ca -out ca.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out leaf.key.ec 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in leaf.key.ec -out leaf.key
    openssl req -new -key leaf.key -subj /CN=127.0.0.1 -out leaf.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile leaf.ext -out leaf.crt 2>/dev/null
)

TLS_REDIS_PORT=$(pick_port)
start_redis "$WORK" --tls-port "$TLS_REDIS_PORT" --tls-cert-file "$WORK/leaf.crt" \
    --tls-key-file "$WORK/leaf.key" --tls-ca-cert-file "$WORK/ca.crt" --tls-auth-clients no
log "redis-server pid $REDIS_PID: plain $REDIS_PORT, TLS $TLS_REDIS_PORT"

# Plain moat: plain on both sides.
start_moat "$WORK/moat-plain.log" "$REDIS_PORT"
PLAIN_PID=$MOAT_PID PLAIN_PORT=$MOAT_PORT

# TLS moat: clients over TLS on TLS_PORT, Redis over TLS. Its plain listener answers
# wait_pong (PING is answered by moat itself, so this does not wait for Redis).
TLS_PORT=$(pick_port)
cat >"$WORK/moat-tls.toml" <<EOF
[proxy]
tls_listen = "127.0.0.1:$TLS_PORT"

[proxy.tls]
cert_file = "$WORK/leaf.crt"
key_file = "$WORK/leaf.key"

[backend.tls]
ca_file = "$WORK/ca.crt"
EOF
start_moat "$WORK/moat-tls.log" "$TLS_REDIS_PORT" --config "$WORK/moat-tls.toml"
TLSM_PID=$MOAT_PID
log "moat plain pid $PLAIN_PID port $PLAIN_PORT; moat TLS pid $TLSM_PID port $TLS_PORT"
# Through TLS on both sides before measuring.
[ "$(redis-cli -p "$TLS_PORT" --tls --cacert "$WORK/ca.crt" set warm up)" = OK ] ||
    die "SET through TLS failed (see $WORK/moat-tls.log)"

TLS_ARGS=(--tls --cacert "$WORK/ca.crt")

# run PID PORT [ARGS...]: redis-benchmark against PORT; prints "rps_set rps_get ticks" with
# the CPU ticks PID used.
run() {
    local pid=$1 port=$2 t0 t1 csv
    shift 2
    t0=$(cpu_ticks "$pid")
    csv=$(redis-benchmark -h 127.0.0.1 -p "$port" "$@" --csv -q)
    t1=$(cpu_ticks "$pid")
    echo "$csv" | awk -F'"' -v d="$((t1 - t0))" '
        /^"SET"/ { s = $4 } /^"GET"/ { g = $4 } /^"PING_INLINE"/ { p = $4 }
        END { printf "%s %s %s %d\n", s + 0, g + 0, p + 0, d }'
}

echo "# tls.sh $(date -u +%FT%TZ) N=$N HS_N=$HS_N HS_CLIENTS=$HS_CLIENTS ROUNDS=$ROUNDS" >"$OUT"
for round in $(seq "$ROUNDS"); do
    for target in plain tls; do
        if [ "$target" = plain ]; then pid=$PLAIN_PID port=$PLAIN_PORT extra=(); else
            pid=$TLSM_PID port=$TLS_PORT extra=("${TLS_ARGS[@]}"); fi
        wait_quiet 0.3 10 || true
        # Handshakes: a connection per request.
        start=$(now_s)
        read -r _ _ _ ticks < <(run "$pid" "$port" "${extra[@]}" -t ping_inline -k 0 \
            -n "$HS_N" -c "$HS_CLIENTS")
        secs=$(awk -v a="$start" -v b="$(now_s)" 'BEGIN { print b - a }')
        echo "hs $target $round $HS_N $ticks $secs" | tee -a "$OUT" >&2
        wait_quiet 0.3 10 || true
        read -r set get _ ticks < <(run "$pid" "$port" "${extra[@]}" -t set,get -n "$N" -c 50 -P 1)
        echo "tp $target $round $set $get $ticks" | tee -a "$OUT" >&2
    done
done

python3 - "$OUT" "$CLK_TCK" "$N" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("#")]
tck, n = int(sys.argv[2]), int(sys.argv[3])
med = st.median
print("\nhandshakes (a new connection per PING, -k 0):")
hs = {}
for t in ("plain", "tls"):
    r = [x for x in rows if x[0] == "hs" and x[1] == t]
    us = med(int(x[4]) / tck * 1e6 / int(x[3]) for x in r)
    cps = med(int(x[3]) / float(x[5]) for x in r)
    hs[t] = us
    print(f"  {t:<5} moat CPU per connection {us:7.1f} us   {cps:8.0f} connections/s")
print(f"  TLS handshake's own cost: {hs['tls'] - hs['plain']:.1f} us of moat CPU per connection")
print(f"\nthroughput -P 1 -c 50 -n {n} (medians of {len(rows) // 4} rounds):")
base = {}
for t in ("plain", "tls"):
    r = [x for x in rows if x[0] == "tp" and x[1] == t]
    s, g = med(float(x[3]) for x in r), med(float(x[4]) for x in r)
    us = med(int(x[5]) / tck * 1e6 / (2 * n) for x in r)
    base.setdefault("s", s); base.setdefault("g", g)
    print(f"  {t:<5} SET {s:9.0f} rps ({s / base['s']:.2f}x)  GET {g:9.0f} rps "
          f"({g / base['g']:.2f}x)  moat CPU {us:5.1f} us/request")
PY
log "raw numbers: $OUT"
