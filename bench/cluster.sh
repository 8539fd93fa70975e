#!/usr/bin/env bash
# Redis Cluster behind one moat per node, against the same cluster shape without moat.
#
# Starts two 3-primary clusters on loopback: "direct" (nodes announce their own ports) and
# "moat" (each node announces its moat's port, `cluster-announce-port`, with a moat per node
# in front). Then, in alternating rounds:
#   node     redis-benchmark against ONE node (direct) or its moat, on keys of one hash tag
#            that node owns (no redirections): the per-node cost of moat;
#   cluster  redis-benchmark --cluster -t set,get against the whole cluster, which it learns
#            from CLUSTER NODES: the moat cluster's map names the moats.
# Reports median requests per second over the rounds, per test and pipeline depth.
#
# Environment:
#   ROUNDS=3         rounds; each runs every case against both targets
#   N=100000         requests per redis-benchmark run
#   C=50             concurrent benchmark connections
#   PIPELINES="1 16" pipeline depths (-P)
#   MOAT_BIN=PATH    benchmark this moat binary instead of building one
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
N=${N:-100000}
C=${C:-50}
PIPELINES=${PIPELINES:-"1 16"}

need redis-server redis-cli redis-benchmark awk sort

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench-cluster.XXXXXX")
bench_traps "$work"
build_moat

# start_node DIR PORT BUS_PORT [ANNOUNCE_PORT]: one cluster-enabled redis-server.
start_node() {
    local dir=$1 port=$2 bus=$3 announce=${4:-}
    mkdir -p "$dir"
    local extra=()
    if [ -n "$announce" ]; then
        extra=(--cluster-announce-ip 127.0.0.1 --cluster-announce-port "$announce"
            --cluster-announce-bus-port "$bus")
    fi
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --protected-mode no --dir "$dir" --logfile "$dir/redis.log" --daemonize no \
        --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-port "$bus" \
        "${extra[@]}" >/dev/null 2>&1 &
    track "$!"
    wait_pong "$port" "$!" || die "redis-server on $port did not start"
}

# form PORT...: gives the nodes a third of the slots each and joins them (by real ports).
form() {
    local ports=("$@") per=$((16384 / $#)) i first last
    for i in "${!ports[@]}"; do
        first=$((i * per))
        last=$(((i + 1) * per - 1))
        [ "$i" -eq $(($# - 1)) ] && last=16383
        redis-cli -p "${ports[i]}" CLUSTER ADDSLOTSRANGE "$first" "$last" >/dev/null
        redis-cli -p "${ports[i]}" CLUSTER SET-CONFIG-EPOCH $((i + 1)) >/dev/null
    done
    for i in "${!ports[@]}"; do
        [ "$i" -eq 0 ] && continue
        redis-cli -p "${ports[0]}" CLUSTER MEET 127.0.0.1 "${ports[i]}" \
            "$(redis-cli -p "${ports[i]}" CONFIG GET cluster-port | tail -1)" >/dev/null
    done
    for _ in $(seq 600); do
        local ok=0
        for p in "${ports[@]}"; do
            redis-cli -p "$p" CLUSTER INFO | grep -q "cluster_state:ok" && ok=$((ok + 1))
            redis-cli -p "$p" CLUSTER INFO | grep -q "cluster_known_nodes:$#" || ok=0
        done
        [ "$ok" -eq "$#" ] && return 0
        sleep 0.1
    done
    die "cluster on ${ports[*]} did not reach cluster_state:ok"
}

direct=() moat_nodes=() moats=()
for i in 0 1 2; do
    p=$(pick_port) b=$(pick_port)
    start_node "$work/direct$i" "$p" "$b"
    direct+=("$p")
done
form "${direct[@]}"
for i in 0 1 2; do
    p=$(pick_port) b=$(pick_port) m=$(pick_port)
    start_node "$work/moat$i" "$p" "$b" "$m"
    moat_nodes+=("$p")
    "$MOAT_BIN" proxy --admin 127.0.0.1:0 --listen "127.0.0.1:$m" --backend "127.0.0.1:$p" \
        >"$work/moat$i.log" 2>&1 &
    track "$!"
    wait_pong "$m" "$!" || die "moat on $m did not start"
    moats+=("$m")
done
form "${moat_nodes[@]}"
log "direct cluster: ${direct[*]}; moat cluster: nodes ${moat_nodes[*]}, moats ${moats[*]}"

# A hash tag owned by node 0 of both clusters (slots 0..5460): no redirection in "node".
tag=""
for i in $(seq 1000); do
    slot=$(redis-cli -p "${direct[0]}" CLUSTER KEYSLOT "{t$i}")
    if [ "$slot" -lt 5461 ]; then
        tag="{t$i}"
        break
    fi
done
[ -n "$tag" ] || die "no hash tag in node 0's slots"

mkdir -p bench/results
csv="bench/results/cluster-$(date +%Y%m%d-%H%M%S).csv"
echo "round,case,target,test,pipeline,rps" >"$csv"

# run ROUND CASE TARGET PIPELINE TEST: one redis-benchmark run, appended to the CSV.
run() {
    local round=$1 case=$2 target=$3 pipeline=$4 test=$5 port args out rps
    if [ "$case" = node ]; then
        if [ "$target" = direct ]; then port=${direct[0]}; else port=${moats[0]}; fi
        if [ "$test" = set ]; then
            args=(SET "${tag}key:__rand_int__" xxx)
        else
            args=(GET "${tag}key:__rand_int__")
        fi
        out=$(redis-benchmark -h 127.0.0.1 -p "$port" -n "$N" -c "$C" -P "$pipeline" \
            -r 100000 --csv -q "${args[@]}" 2>&1) || die "redis-benchmark failed: $out"
    else
        if [ "$target" = direct ]; then port=${direct[0]}; else port=${moats[0]}; fi
        out=$(redis-benchmark --cluster -h 127.0.0.1 -p "$port" -n "$N" -c "$C" \
            -P "$pipeline" -r 100000 -t "$test" --csv -q 2>&1) ||
            die "redis-benchmark --cluster failed: $out"
    fi
    # The last CSV line: "NAME","rps",...
    rps=$(printf '%s\n' "$out" | awk -F'","' '/^"/ && !/^"test"/ { v = $2 } END { print v + 0 }')
    [ "$rps" != 0 ] || die "cannot read redis-benchmark output: $out"
    echo "$round,$case,$target,$test,$pipeline,$rps" >>"$csv"
    printf '  round %d %-7s %-6s %-3s P%-2s %10s rps\n' "$round" "$case" "$target" "$test" \
        "$pipeline" "$rps" >&2
}

for round in $(seq "$ROUNDS"); do
    order="direct moat"
    [ $((round % 2)) -eq 0 ] && order="moat direct"
    for case in node cluster; do
        for pipeline in $PIPELINES; do
            for target in $order; do
                for test in set get; do
                    run "$round" "$case" "$target" "$pipeline" "$test"
                done
            done
        done
    done
done

echo
echo "Redis Cluster, moat per node vs direct: medians over $ROUNDS round(s), N=$N, C=$C ($(nproc) CPUs)"
printf '%-8s %-4s %-4s %12s %12s %8s\n' case test P rps_direct rps_moat moat/dir
for case in node cluster; do
    for test in set get; do
        for pipeline in $PIPELINES; do
            col() {
                awk -F, -v c="$case" -v t="$1" -v x="$test" -v p="$pipeline" \
                    'NR > 1 && $2 == c && $3 == t && $4 == x && $5 == p { print $6 }' "$csv"
            }
            d=$(col direct | median %.0f)
            m=$(col moat | median %.0f)
            r=$(awk -v d="$d" -v m="$m" 'BEGIN { if (d == "-" || m == "-" || d == 0) print "-"; else printf "%.3f", m / d }')
            printf '%-8s %-4s P%-3s %12s %12s %8s\n' "$case" "$test" "$pipeline" "$d" "$m" "$r"
        done
    done
done
echo
echo "raw per-run numbers: $csv"
