#!/usr/bin/env python3
"""Summarizes tests/compat/redis-py.sh's junit files.

    python3 tests/compat/summarize.py [--out target/compat] [--examples 3]

Prints (and writes to OUT/summary.txt) the passed/failed/errors/skipped counts of each run
(junit-<target>-resp<N>.xml) and, per protocol, the share of the tests passing straight on Redis
that also pass through moat. Then lists the tests that pass directly but fail (or error) through
moat, grouped by the first line of their error with numbers and quoted values blanked, into
OUT/moat-only-failures.txt (every test) and, shortened, on stdout.

Standard library only, so any python3 runs it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import xml.etree.ElementTree as ET

RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


def load(path):
    """{test id: (status, first line of the message)} of one junit file."""
    results = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        file = case.get("file")
        classname = case.get("classname", "")
        name = case.get("name", "")
        if file:
            # xunit1: file is the module's path; the class, if any, follows the module in classname.
            module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
            rest = classname[len(module) + 1 :] if classname.startswith(module + ".") else ""
            tid = "::".join(p for p in (file, rest, name) if p)
        else:
            tid = f"{classname}::{name}"
        status, message = "passed", ""
        for child in case:
            tag = child.tag
            if tag in ("failure", "error"):
                msg = child.get("message") or (child.text or "").strip()
                first = msg.strip().splitlines()[0] if msg.strip() else tag
                # A failure in the call and an error in teardown: the failure tells more.
                if status != "failed":
                    status = "failed" if tag == "failure" else "error"
                    message = first
            elif tag == "skipped" and status == "passed":
                status = "skipped"
                message = child.get("message", "")
        # pytest writes a second testcase element for an error in teardown after a failed or
        # passed call: keep the worse of the two (the failure's message over the error's).
        prev = results.get(tid)
        if prev is None or RANK[status] > RANK[prev[0]]:
            results[tid] = (status, message)
    return results


def pattern(message: str) -> str:
    """The message with what varies from test to test blanked, to group by cause."""
    m = message.strip()
    m = re.sub(r"^[^\s:]+\.py:\d+: ", "", m)  # --tb=line's "path:line: "
    m = re.sub(r"0x[0-9a-fA-F]+", "0x…", m)
    m = re.sub(r"b?'[^']*'", "'…'", m)
    m = re.sub(r'b?"[^"]*"', '"…"', m)
    m = re.sub(r"\d+(\.\d+)?", "N", m)
    if len(m) > 200:
        m = m[:200] + "…"
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "target", "compat"))
    ap.add_argument("--examples", type=int, default=3, help="example tests per group on stdout")
    args = ap.parse_args()
    out = os.path.abspath(args.out)

    runs = {}
    for target in ("direct", "moat"):
        for proto in ("2", "3"):
            path = os.path.join(out, f"junit-{target}-resp{proto}.xml")
            if os.path.exists(path):
                runs[(target, proto)] = load(path)
    if not runs:
        sys.exit(f"summarize: no junit-*.xml under {out}")

    info = {}  # (target, proto) -> (seconds, pytest exit, finished at, selection)
    tsv = os.path.join(out, "runs.tsv")
    if os.path.exists(tsv):
        with open(tsv) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 6:
                    info[(parts[0], parts[1])] = (parts[2], parts[3], parts[4], parts[5].strip())

    lines = [
        "passed counts xpassed tests; a test failing in its call and erroring in teardown counts as failed",
    ]
    lines.append(
        f"{'run':<14}{'passed':>8}{'failed':>8}{'errors':>8}{'skipped':>9}{'total':>7}"
        f"{'time':>8}{'exit':>6}  finished             selection"
    )
    for (target, proto), res in sorted(runs.items()):
        c = collections.Counter(s for s, _ in res.values())
        took, rc, when, sel = info.get((target, proto), ("?", "?", "?", "?"))
        lines.append(
            f"{target + '-resp' + proto:<14}{c['passed']:>8}{c['failed']:>8}{c['error']:>8}"
            f"{c['skipped']:>9}{len(res):>7}{took + 's':>8}{rc:>6}  {when:<20} {sel}"
        )
    lines.append("")
    for proto in ("2", "3"):
        a, b = info.get(("direct", proto)), info.get(("moat", proto))
        if a and b and a[3] != b[3]:
            lines.append(f"WARNING: RESP{proto} direct and moat ran different selections: {a[3]!r} vs {b[3]!r}")
    regressions = {}  # proto -> {tid: message}
    for proto in ("2", "3"):
        d, m = runs.get(("direct", proto)), runs.get(("moat", proto))
        if d is None or m is None:
            continue
        dp = [t for t, (s, _) in d.items() if s == "passed"]
        mp = sum(1 for s, _ in m.values() if s == "passed")
        both = sum(1 for t in dp if m.get(t, ("missing",))[0] == "passed")
        lost = {t: m[t][1] for t in dp if t in m and m[t][0] in ("failed", "error")}
        other = [t for t in dp if t not in m or m[t][0] not in ("passed", "failed", "error")]
        gained = [t for t, (s, _) in m.items() if s == "passed" and d.get(t, ("",))[0] != "passed"]
        regressions[proto] = lost
        ratio = mp / len(dp) if dp else 0.0
        lines.append(
            f"RESP{proto}: moat/direct passed = {mp}/{len(dp)} = {ratio:.1%}; "
            f"passing both ways {both}; direct-only passes failing or erroring through moat "
            f"{len(lost)}, skipped or missing through moat {len(other)}; "
            f"passing only through moat {len(gained)}"
        )
    summary = "\n".join(lines) + "\n"
    print(summary)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary)

    if not regressions:
        return
    # Group (test, protocol) pairs by the pattern of their message.
    groups = collections.defaultdict(list)  # pattern -> [(tid, proto, message)]
    for proto, lost in regressions.items():
        for tid, msg in lost.items():
            groups[pattern(msg)].append((tid, proto, msg))
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))

    full = [
        "Tests passing straight on Redis but failing through moat, grouped by the first line "
        "of their error (numbers and quoted values blanked).",
        "count = (test, protocol) pairs; RESP2/RESP3 = how many of them in each protocol.",
        "",
    ]
    short = ["Direct passes failing through moat, by error pattern:"]
    for pat, items in ordered:
        per = collections.Counter(p for _, p, _ in items)
        head = f"[{len(items):>4}] (RESP2 {per['2']}, RESP3 {per['3']}) {pat}"
        full.append(head)
        short.append(head)
        seen = []
        for tid, proto, msg in sorted(items):
            full.append(f"        resp{proto} {tid}")
            full.append(f"               {msg[:300]}")
            if tid not in seen:
                seen.append(tid)
        short.append(f"        first: {sorted(items)[0][2][:300]}")
        for tid in seen[: args.examples]:
            short.append(f"        e.g. {tid}")
        full.append("")
    with open(os.path.join(out, "moat-only-failures.txt"), "w") as f:
        f.write("\n".join(full) + "\n")
    print("\n".join(short))
    print(f"\n(every test: {os.path.join(out, 'moat-only-failures.txt')})")


if __name__ == "__main__":
    main()
