"""pytest plugin for tests/compat/redis-py.sh with REPAIR=1: after every test, puts back the one
piece of server state whose leftover spoils every later test through moat, and says which tests
left it.

redis-py's auth tests run `CONFIG SET requirepass ...` and rely on `AUTH` to reset it in their
teardown. Through moat, AUTH is answered by moat (which has no users configured), so the
teardown fails and Redis keeps the password: moat's existing shared connections stay
authenticated, but every backend connection moat opens or RESETs afterwards (MULTI, WATCH,
SUBSCRIBE, MONITOR, blocking calls) gets NOAUTH, and hundreds of later tests fail for that one
cause. Straight against Redis the teardown works and this plugin finds nothing to do.

The plugin talks to Redis itself ($COMPAT_REPAIR_URL, never through moat) over one connection
opened before the first test, which stays authenticated whatever password is set later. After
each test, if the default user requires a password (or was disabled), it runs
`ACL SETUSER default on nopass` and `CONFIG SET requirepass ""`, and records the test. The list
is printed at the end and written to $COMPAT_REPAIR_LOG.
"""

from __future__ import annotations

import os

import pytest

_conn = None
_repaired: list[str] = []
_unrepairable: list[str] = []


def _connect():
    import redis

    return redis.Redis.from_url(os.environ["COMPAT_REPAIR_URL"], protocol=2, socket_timeout=5).client()


def pytest_configure(config):
    global _conn
    if os.environ.get("COMPAT_REPAIR_URL"):
        _conn = _connect()
        _conn.ping()
        _conn.client_setname("compat-repair")


def _default_user_locked(conn) -> bool:
    user = conn.acl_getuser("default")
    flags = [f.decode() if isinstance(f, bytes) else f for f in user.get("flags", [])]
    return "nopass" not in flags or "off" in flags


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    global _conn
    if _conn is None:
        return
    try:
        try:
            locked = _default_user_locked(_conn)
        except Exception:
            # A test killed our connection (CLIENT KILL ... TYPE normal): a new one still works
            # unless the password is set, which is then reported as unrepairable.
            _conn = _connect()
            locked = _default_user_locked(_conn)
        if locked:
            _conn.execute_command("ACL", "SETUSER", "default", "on", "nopass")
            _conn.config_set("requirepass", "")
            _repaired.append(item.nodeid)
    except Exception as e:  # noqa: BLE001 - reported, never fails the test
        _unrepairable.append(f"{item.nodeid}: {type(e).__name__}: {e}")


def pytest_terminal_summary(terminalreporter):
    if _conn is None:
        return
    lines = [f"compat repair: the default user's password was reset after {len(_repaired)} tests"]
    lines += [f"  {n}" for n in _repaired]
    if _unrepairable:
        lines.append(f"compat repair: could not check or repair after {len(_unrepairable)} tests")
        lines += [f"  {n}" for n in _unrepairable]
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("COMPAT_REPAIR_LOG")
    if path:
        with open(path, "a") as f:
            f.write("\n".join(lines) + "\n")
