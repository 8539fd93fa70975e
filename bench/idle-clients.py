#!/usr/bin/env python3
"""Holds N idle client connections to a Redis-speaking PORT and reports what they cost the
process PID in RSS: before, after each client connected and ran one PING (then idle), after
each client also ran one pipeline of PIPELINE GETs (then idle again), and after all closed.

Used by bench/idle.sh. Clients come from several 127.0.x.y source addresses; every wait is
bounded in time. Prints one `phase rss_kib clients` line per phase on stdout.

    idle-clients.py PORT PID N [SOURCES] [PIPELINE] [VALUE_LEN]
"""

import resource
import selectors
import socket
import sys
import time

port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
n_sources = int(sys.argv[4]) if len(sys.argv) > 4 else 8
pipeline = int(sys.argv[5]) if len(sys.argv) > 5 else 100
value_len = int(sys.argv[6]) if len(sys.argv) > 6 else 64
BATCH = 500
PHASE_LIMIT = 120.0  # seconds any phase may take
SETTLE = 2.0  # seconds for the proxy to finish freeing before RSS is read

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if n + 64 > hard:
    sys.exit(f"idle-clients: {n} clients need more than the fd limit {hard}")


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("idle-clients: no VmRSS")


def report(phase, clients):
    time.sleep(SETTLE)
    print(f"{phase} {rss_kib()} {clients}", flush=True)


def exchange(socks, request, expect, deadline):
    """Sends `request` on every socket, in batches, and reads `expect` reply bytes from each."""
    sel = selectors.DefaultSelector()
    for start in range(0, len(socks), BATCH):
        batch = socks[start : start + BATCH]
        left = {}
        for s in batch:
            s.setblocking(True)
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.sendall(request)
            s.setblocking(False)
            left[s] = expect
            sel.register(s, selectors.EVENT_READ)
        while left:
            if time.monotonic() > deadline:
                raise SystemExit(f"idle-clients: replies still missing from {len(left)} clients")
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                data = s.recv(1 << 16)
                if not data:
                    raise SystemExit("idle-clients: a connection closed during the exchange")
                left[s] -= len(data)
                if left[s] <= 0:
                    sel.unregister(s)
                    del left[s]
    sel.close()


def main():
    value = b"x" * value_len
    key = b"idle:key"
    # The key the pipelines read, set through the target itself.
    setup = socket.create_connection(("127.0.0.1", port), timeout=10)
    setup.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
    if setup.recv(64) != b"+OK\r\n":
        raise SystemExit("idle-clients: SET failed")
    setup.close()

    report("before", 0)
    deadline = time.monotonic() + PHASE_LIMIT
    socks = []
    for i in range(n):
        if time.monotonic() > deadline:
            raise SystemExit(f"idle-clients: only {len(socks)} of {n} connected in time")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.{2 + i % n_sources // 250}.{1 + i % n_sources % 250}", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    exchange(socks, b"*1\r\n$4\r\nPING\r\n", len(b"+PONG\r\n"), time.monotonic() + PHASE_LIMIT)
    report("pinged", len(socks))

    get = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    reply = len(b"$%d\r\n" % value_len) + value_len + 2
    exchange(socks, get * pipeline, reply * pipeline, time.monotonic() + PHASE_LIMIT)
    report("pipelined", len(socks))

    for s in socks:
        s.close()
    report("closed", 0)


main()
