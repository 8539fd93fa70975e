#!/usr/bin/env bash
# Latency of bans through a real CrowdSec LAPI (loopback, release build): from
# `cscli decisions add` to moat refusing the source, and from a moat ban to its appearance in
# `cscli decisions list`. Five samples each; prints the medians. Needs crowdsec and cscli
# (bash scripts/install-crowdsec.sh). The pull side is bounded by [crowdsec] poll_interval
# (200ms in the test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo nextest run --release -p moat-proxy --test crowdsec --no-capture \
    -E 'test(/cscli_decision_is_applied|shows_up_in_crowdsec/)' 2>&1 | grep -E '^MEASURE|PASS|FAIL'
