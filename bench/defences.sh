#!/usr/bin/env bash
# Defence efficacy: runs `moat lab` on the default attack matrix (or SCENARIO) and prints,
# per attack, what legitimate clients got behind moat: success during the attack, steady p99
# against the same run's baseline, fresh probes, and moat's RSS growth. With BEFORE=DIR (a
# report directory from an earlier run, e.g. before a change) it prints both side by side.
#
#   bash bench/defences.sh                         # the default matrix, ~15 minutes
#   BEFORE=/tmp/lab-before bash bench/defences.sh  # compare with an earlier report
#   REPORT=/tmp/lab-after bash bench/defences.sh   # only print an existing report
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCENARIO=${SCENARIO:-}
OUT=${REPORT:-}

if [[ -z "$OUT" ]]; then
    bash scripts/install-redis.sh
    cargo build --release -q -p moat --bin moat
    OUT="target/lab/defences-$(date -u +%Y%m%dT%H%M%SZ)"
    ./target/release/moat lab ${SCENARIO:+"$SCENARIO"} --out "$OUT" -q || true
fi

python3 - "$OUT" "${BEFORE:-}" <<'PY'
import json, sys

def load(d):
    r = json.load(open(f"{d}/report.json"))
    rows = {}
    for run in r["runs"]:
        phases = {p["name"]: p for p in run["phases"]}
        att, base = phases.get("attack"), phases.get("baseline")
        if not att or not base:
            continue
        def p99(p):
            g = [g for g in p["groups"] if g["group"] == "steady"]
            return g[0]["latency_us"]["p99"] / 1000 if g else None
        b, a = p99(base), p99(att)
        rows[(run["attack"], run["target"])] = dict(
            success=att.get("legit_success_pct"),
            fresh=att.get("fresh_success_pct"),
            p99=a, ratio=(a / b if a and b else None),
            rss=(run.get("moat_rss_growth") or 0) / 2**20 if run["target"] == "moat" else None,
            noisy=att.get("noisy"))
    return rows, r.get("partial")

def cell(v):
    if v is None:
        return "–"
    s = f"{v['success']:.1f}% · p99 ×{v['ratio']:.1f} ({v['p99']:.1f} ms) · fresh {v['fresh']:.0f}%"
    if v["rss"] is not None:
        s += f" · RSS +{v['rss']:.0f} MiB"
    return s + (" (noisy)" if v["noisy"] else "")

after, partial = load(sys.argv[1])
before = load(sys.argv[2])[0] if sys.argv[2] else None
print(f"report: {sys.argv[1]}" + (" (partial)" if partial else ""))
attacks = list(dict.fromkeys(a for a, _ in after))
targets = list(dict.fromkeys(t for _, t in after))
for t in targets:
    print(f"\n{t}")
    head = "| attack | " + ("before | after |" if before else "legit success · steady p99 vs baseline · fresh probes · moat RSS |")
    print(head)
    print("|---|---|" + ("---|" if before else ""))
    for a in attacks:
        now = after.get((a, t))
        if before is not None:
            print(f"| {a} | {cell(before.get((a, t)))} | {cell(now)} |")
        else:
            print(f"| {a} | {cell(now)} |")
PY
