#!/usr/bin/env bash
# Makes redis-server, redis-cli and redis-benchmark available for moat's tests
# and benchmarks. Does nothing (and prints nothing) when redis-server is
# already on PATH, so CI and developers can call it unconditionally.
#
# Tests never use a system redis service that apt may start on port 6379:
# moat-testkit and bench/proxy.sh launch their own servers on free ports.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis.sh: redis-server is missing and apt-get is unavailable;" \
        "install redis-server and redis-tools (redis-cli, redis-benchmark) by hand" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-redis.sh: need root or sudo to apt-get install redis-server" >&2
        exit 1
    fi
fi

echo "install-redis.sh: installing redis-server and redis-tools with apt" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null

if ! command -v redis-server >/dev/null 2>&1; then
    echo "install-redis.sh: apt-get finished but redis-server is still not on PATH" >&2
    exit 1
fi
