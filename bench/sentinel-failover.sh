#!/usr/bin/env bash
# The client-visible gap of a Sentinel failover through moat (issue 20): a client SETs every
# 5 ms through moat while (a) SENTINEL FAILOVER runs and (b) the primary is killed. Starts
# its own primary, replica and Sentinel on loopback (the installed redis-server, run with
# --sentinel for the Sentinel); release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p moat-proxy --example sentinel_failover
