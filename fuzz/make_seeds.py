#!/usr/bin/env python3
"""Writes the hand-made seed inputs into corpus/<target>/ (run from fuzz/).

Each target's input starts with a small header (see the target's doc
comment): request_parser `[4 limit bytes][n][n chunk sizes]`, reply_framer
`[depth selector][n][n chunk sizes]`, session `[n][n chunk sizes]`.
"""
import os

def mb(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

AUTH = mb(b"AUTH", b"fuzz", b"pw")
REQS = {
    "get": mb(b"GET", b"k"),
    "set": mb(b"SET", b"key", b"value", b"EX", b"10"),
    "inline": b"SET k \"a b\\x41\\n\" 'c\\'d'\r\n",
    "inline_lf": b"PING\n",
    "pipeline": mb(b"SET", b"a", b"1") + mb(b"GET", b"a") + b"PING\r\n" + mb(b"INCR", b"a"),
    "hello3": mb(b"HELLO", b"3") + mb(b"PING"),
    "hello_auth": mb(b"HELLO", b"3", b"AUTH", b"fuzz", b"pw", b"SETNAME", b"me"),
    "auth": AUTH + mb(b"GET", b"x") + mb(b"CONFIG", b"GET", b"maxmemory"),
    "auth_default": b"AUTH pw\r\n",
    "subscribe": mb(b"SUBSCRIBE", b"ch1", b"ch2") + mb(b"PING") + mb(b"UNSUBSCRIBE"),
    "psubscribe3": mb(b"HELLO", b"3") + mb(b"PSUBSCRIBE", b"c*") + mb(b"PUNSUBSCRIBE", b"c*") + mb(b"GET", b"k"),
    "multi": mb(b"MULTI") + mb(b"SET", b"a", b"1") + mb(b"INCR", b"a") + mb(b"EXEC"),
    "watch": mb(b"WATCH", b"a") + mb(b"MULTI") + mb(b"GET", b"a") + mb(b"DISCARD"),
    "select": mb(b"SELECT", b"3") + mb(b"CLIENT", b"SETNAME", b"x") + mb(b"CLIENT", b"INFO"),
    "blpop": mb(b"BLPOP", b"q", b"0.1"),
    "empty": b"*0\r\n*-1\r\n\r\n  \n",
    "reset_quit": mb(b"RESET") + mb(b"QUIT"),
    "eval": mb(b"EVAL", b"return 1", b"1", b"k"),
    "bin": mb(b"SET", b"k", bytes(range(256))),
}
REPLIES = {
    "simple": b"+OK\r\n",
    "error": b"-ERR unknown command\r\n",
    "int": b":-42\r\n",
    "bulk": b"$5\r\nhello\r\n",
    "nulls": b"$-1\r\n*-1\r\n_\r\n",
    "array": b"*3\r\n:1\r\n$1\r\na\r\n*2\r\n+x\r\n*0\r\n",
    "nested": b"*1\r\n*1\r\n*1\r\n*1\r\n*2\r\n:1\r\n:2\r\n",
    "map": b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n,3.14\r\n#t\r\n",
    "resp3_scalars": b",inf\r\n#f\r\n(123456789012345678901234567890\r\n=15\r\ntxt:Some string\r\n!21\r\nSYNTAX invalid syntax\r\n",
    "push": b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nmsg\r\n",
    "attr": b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
    "attr_nested": b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n:7\r\n",
    "hello_reply": b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
    "pipeline": b"+OK\r\n:1\r\n$3\r\nfoo\r\n*2\r\n$1\r\na\r\n$-1\r\n",
}

def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

for name, payload in REQS.items():
    write("request_parser", name, b"\xff\x00\x00\x00\x00" + payload)  # default limits, whole
    body = payload if b"AUTH" in payload else AUTH + payload
    write("session", name, b"\x00" + body)
write("request_parser", "small_chunked", b"\x03\x10\x08\x40\x03\x01\x05\x02" + REQS["pipeline"])
write("request_parser", "small_inline", b"\x01\x01\x02\x48\x02\x03\x00" + REQS["inline"])
write("session", "pipeline_split", b"\x03\x01\x07\x02" + AUTH + REQS["pipeline"])
write("session", "multi_split", b"\x02\x05\x11" + AUTH + REQS["multi"])
write("session", "noauth_get", b"\x00" + mb(b"GET", b"k"))
write("session", "auth_default_nopass", b"\x00AUTH default x\r\nGET k\r\n")
write("session", "auth_wrong", b"\x00AUTH fuzz nope\r\nAUTH pw\r\nGET k\r\n")

for name, payload in REPLIES.items():
    write("reply_framer", name, b"\x07\x00" + payload)  # max_depth 128, whole
write("reply_framer", "nested_depth2_chunked", b"\x02\x03\x01\x03\x02" + REPLIES["nested"])
write("reply_framer", "attr_chunked", b"\x03\x04\x01\x01\x05\x09" + REPLIES["attr"])
# Depth selectors: 8 -> 512, 9 -> 100000, 3 -> 3.
for name, opener, n, tail, sel in [
    ("deep512_array", b"*1\r\n", 512, b":1\r\n", 8),
    ("deep513_array", b"*1\r\n", 513, b":1\r\n", 9),
    ("deep512_map", b"%1\r\n+k\r\n", 512, b":1\r\n", 8),
    ("deep256_attr", b"|1\r\n+a\r\n+b\r\n*1\r\n", 256, b"_\r\n", 9),
    ("deep4_small", b">1\r\n", 4, b"#t\r\n", 3),
]:
    write("reply_framer", name, bytes([sel, 0]) + opener * n + tail)
