"""redis-py, unmodified, against moat (or Redis itself with TARGET=direct).

Usage: scenario.py HOST:PORT

Runs each step in order, prints one line per step and exits 1 on the first
failure, naming the step (with KEEP_GOING=1 it runs the remaining steps too,
then exits 1). Every socket has a timeout, so a hang fails.
"""

import os
import sys
import threading
import time
import traceback

import redis

CLIENT = "python"
PREFIX = "clients:py:"
TIMEOUT = 10.0


def fail(step, message):
    print(f"[{CLIENT}] FAIL {step}: {message}", flush=True)
    sys.exit(1)


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def connect(host, port, **kwargs):
    kwargs.setdefault("decode_responses", True)
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=5,
        **kwargs,
    )


def later(delay, fn):
    """Runs fn on a thread after delay seconds; returns the thread."""

    def run():
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_message(ps, what, timeout=5.0):
    """The next non-None message from a PubSub, or an error after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if msg is not None:
            return msg
    raise AssertionError(f"no {what} within {timeout}s")


def step_handshake(host, port):
    r = connect(host, port, client_name="moat-clients-py")
    eq(r.ping(), True, "PING")
    eq(r.client_getname(), "moat-clients-py", "CLIENT GETNAME")
    eq(r.echo("hello moat"), "hello moat", "ECHO")
    r.close()


def step_pipeline(host, port):
    r = connect(host, port)
    n = 25
    p = r.pipeline(transaction=False)
    p.delete(PREFIX + "pl:counter")
    for i in range(n):
        p.set(f"{PREFIX}pl:{i}", f"v{i}")
        p.incr(PREFIX + "pl:counter")
    for i in range(n):
        p.get(f"{PREFIX}pl:{i}")
    p.get(PREFIX + "pl:missing")
    results = p.execute()
    expected = [0]
    for i in range(n):
        expected += [True, i + 1]
    expected += [f"v{i}" for i in range(n)]
    expected += [None]
    check(len(expected) >= 50, "pipeline too short")
    eq(len(results), len(expected), "pipeline reply count")
    for i, (got, want) in enumerate(zip(results, expected)):
        eq(got, want, f"pipeline reply #{i}")
    print(f"[{CLIENT}]   pipeline of {len(expected)} commands, replies in order")
    r.close()


def step_watch_exec(host, port):
    r = connect(host, port)
    key = PREFIX + "tx:ok"
    r.set(key, "10")
    with r.pipeline() as p:
        p.watch(key)
        current = int(p.get(key))
        p.multi()
        p.set(key, str(current + 5))
        p.incr(key)
        results = p.execute()
    eq(results, [True, 16], "EXEC results")
    eq(r.get(key), "16", "value after EXEC")
    r.close()


def step_watch_abort(host, port):
    r = connect(host, port)
    other = connect(host, port)
    key = PREFIX + "tx:abort"
    r.set(key, "original")
    aborted = False
    with r.pipeline() as p:
        p.watch(key)
        eq(p.get(key), "original", "GET under WATCH")
        # Another connection changes the watched key between WATCH and EXEC.
        other.set(key, "changed-by-other")
        p.multi()
        p.set(key, "from-transaction")
        try:
            p.execute()
        except redis.WatchError:
            aborted = True
    check(aborted, "EXEC was not aborted (no WatchError)")
    eq(r.get(key), "changed-by-other", "value after aborted EXEC")
    r.close()
    other.close()


def step_blpop(host, port):
    r = connect(host, port)
    pusher = connect(host, port)
    key = PREFIX + "list"
    r.delete(key)
    t = later(0.2, lambda: pusher.lpush(key, "wake-up"))
    started = time.monotonic()
    got = r.blpop([key], timeout=5)
    waited = time.monotonic() - started
    t.join(timeout=5)
    eq(tuple(got) if got is not None else None, (key, "wake-up"), "BLPOP reply")
    check(0.1 <= waited < 4.0, f"BLPOP returned after {waited:.3f}s, expected ~0.2s")
    print(f"[{CLIENT}]   BLPOP woken after {waited * 1000:.0f} ms")
    r.close()
    pusher.close()


def step_pubsub(host, port):
    r = connect(host, port)
    ps = r.pubsub()
    ps.psubscribe("news.*")
    msg = wait_message(ps, "psubscribe confirmation")
    eq((msg["type"], msg["channel"], msg["data"]), ("psubscribe", "news.*", 1), "psubscribe")
    pub = connect(host, port)
    for i, ch in enumerate(["news.a", "news.b", "news.c"]):
        eq(pub.publish(ch, f"m{i}"), 1, f"PUBLISH {ch} receivers")
    for i, ch in enumerate(["news.a", "news.b", "news.c"]):
        msg = wait_message(ps, f"pmessage #{i}")
        eq(
            (msg["type"], msg["pattern"], msg["channel"], msg["data"]),
            ("pmessage", "news.*", ch, f"m{i}"),
            f"pmessage #{i}",
        )
    ps.punsubscribe("news.*")
    msg = wait_message(ps, "punsubscribe confirmation")
    eq((msg["type"], msg["channel"], msg["data"]), ("punsubscribe", "news.*", 0), "punsubscribe")

    ps.subscribe("plain")
    msg = wait_message(ps, "subscribe confirmation")
    eq((msg["type"], msg["channel"], msg["data"]), ("subscribe", "plain", 1), "subscribe")
    eq(pub.publish("plain", "hello"), 1, "PUBLISH plain receivers")
    msg = wait_message(ps, "message")
    eq((msg["type"], msg["channel"], msg["data"]), ("message", "plain", "hello"), "message")
    ps.unsubscribe("plain")
    msg = wait_message(ps, "unsubscribe confirmation")
    eq((msg["type"], msg["channel"], msg["data"]), ("unsubscribe", "plain", 0), "unsubscribe")
    ps.close()
    # The connection went back to the pool: it must serve plain commands again.
    eq(r.ping(), True, "PING after pub/sub")
    eq(pub.publish("news.a", "nobody"), 0, "PUBLISH after unsubscribe receivers")
    r.close()
    pub.close()


def step_select(host, port):
    key = PREFIX + "db"
    db3 = connect(host, port, db=3)
    db0 = connect(host, port, db=0)
    db0.delete(key)
    eq(db3.set(key, "in-db-3"), True, "SET in db 3")
    eq(db3.get(key), "in-db-3", "GET in db 3")
    eq(db0.get(key), None, "GET in db 0")
    eq(db0.exists(key), 0, "EXISTS in db 0")
    # An explicit SELECT on one connection moves that connection.
    with db0.client() as single:
        single.execute_command("SELECT", 3)
        eq(single.get(key), "in-db-3", "GET after SELECT 3")
        single.execute_command("SELECT", 0)
        eq(single.get(key), None, "GET after SELECT 0")
    eq(db3.delete(key), 1, "DEL in db 3")
    db3.close()
    db0.close()


def step_resp3(host, port):
    r = connect(host, port, protocol=3, client_name="moat-clients-py-resp3")
    hello = r.execute_command("HELLO")
    eq(hello.get("proto"), 3, "HELLO proto")
    eq(r.client_getname(), "moat-clients-py-resp3", "CLIENT GETNAME")
    key = PREFIX + "resp3:h"
    r.delete(key)
    eq(r.hset(key, mapping={"a": "1", "b": "2"}), 2, "HSET")
    eq(r.hgetall(key), {"a": "1", "b": "2"}, "HGETALL")
    # Below the library's callbacks: a RESP3 map arrives as a dict, not a flat list.
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command("HGETALL", key)
        raw = conn.read_response()
    finally:
        r.connection_pool.release(conn)
    check(isinstance(raw, dict), f"raw HGETALL is {type(raw).__name__}, expected a RESP3 map")
    eq(r.zadd(PREFIX + "resp3:z", {"m": 1.5}), 1, "ZADD")
    eq(r.zscore(PREFIX + "resp3:z", "m"), 1.5, "ZSCORE")
    eq(r.set(PREFIX + "resp3:s", "x"), True, "SET")
    eq(r.get(PREFIX + "resp3:s"), "x", "GET")
    eq(r.get(PREFIX + "resp3:none"), None, "GET missing (RESP3 null)")

    ps = r.pubsub()
    ps.subscribe("resp3.chan")
    msg = wait_message(ps, "subscribe confirmation")
    eq((msg["type"], msg["channel"]), ("subscribe", "resp3.chan"), "subscribe")
    eq(r.publish("resp3.chan", "pushed"), 1, "PUBLISH receivers")
    msg = wait_message(ps, "push message")
    eq((msg["type"], msg["channel"], msg["data"]), ("message", "resp3.chan", "pushed"), "message")
    ps.unsubscribe("resp3.chan")
    msg = wait_message(ps, "unsubscribe confirmation")
    eq(msg["type"], "unsubscribe", "unsubscribe")
    ps.close()
    r.delete(key, PREFIX + "resp3:z", PREFIX + "resp3:s")
    r.close()


STEPS = [
    ("handshake", step_handshake),
    ("pipeline", step_pipeline),
    ("watch-exec", step_watch_exec),
    ("watch-abort", step_watch_abort),
    ("blpop", step_blpop),
    ("pubsub", step_pubsub),
    ("select", step_select),
    ("resp3", step_resp3),
]


def main():
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        print("usage: scenario.py HOST:PORT", file=sys.stderr)
        sys.exit(2)
    host, port = sys.argv[1].rsplit(":", 1)
    port = int(port)
    print(f"[{CLIENT}] redis-py {redis.__version__} against {host}:{port}", flush=True)
    keep_going = os.environ.get("KEEP_GOING") == "1"
    failed = []
    for name, fn in STEPS:
        started = time.monotonic()
        try:
            fn(host, port)
        except Exception as e:  # noqa: BLE001 - any failure fails the step
            traceback.print_exc(limit=-2, file=sys.stdout)
            if not keep_going:
                fail(name, f"{type(e).__name__}: {e}")
            print(f"[{CLIENT}] FAIL {name}: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
            continue
        ms = (time.monotonic() - started) * 1000
        print(f"[{CLIENT}] ok   {name} ({ms:.0f} ms)", flush=True)
    if failed:
        print(f"[{CLIENT}] {len(failed)} of {len(STEPS)} steps failed: {' '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"[{CLIENT}] all {len(STEPS)} steps passed", flush=True)


if __name__ == "__main__":
    main()
