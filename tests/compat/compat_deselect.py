"""pytest plugin for tests/compat/redis-py.sh: drops the tests listed in the file named by
$COMPAT_DESELECT (tests/compat/redis-py-deselect.txt), each with its reason.

Entries, one a line: `KIND VALUE REASON...`
  marker NAME    every test carrying the marker
  file   PATH    a test file (relative to the rootdir); not even imported
  test   NODEID  exactly that test, its parametrizations (NODEID[...]) or, for a class, its tests
                 (NODEID::...). Unlike pytest's --deselect, not a prefix: `test_slave_for` does
                 not drop `test_slave_for_slave_not_found_error`.
An entry that matches nothing fails the run (a renamed test must not silently come back).
"""

from __future__ import annotations

import os
import pathlib

import pytest

_entries: list[tuple[str, str, str]] = []
_hits: dict[tuple[str, str], int] = {}


def _load():
    path = os.environ.get("COMPAT_DESELECT")
    if not path:
        return
    with open(path) as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[0] not in ("marker", "file", "test"):
            raise pytest.UsageError(f"{path}:{n}: want 'marker|file|test VALUE REASON', got {line!r}")
        _entries.append((parts[0], parts[1], parts[2]))
        _hits[(parts[0], parts[1])] = 0


def pytest_configure(config):
    _load()


def pytest_ignore_collect(collection_path: pathlib.Path, config):
    for kind, value, _ in _entries:
        if kind == "file" and collection_path == pathlib.Path(config.rootpath, value):
            _hits[(kind, value)] += 1
            return True
    return None


def _match(item, kind, value):
    if kind == "marker":
        return item.get_closest_marker(value) is not None
    if kind == "test":
        nid = item.nodeid
        return nid == value or nid.startswith(value + "[") or nid.startswith(value + "::")
    return False


def pytest_collection_modifyitems(session, config, items):
    if not _entries:
        return
    keep, drop = [], []
    for item in items:
        hit = None
        for kind, value, _ in _entries:
            if kind != "file" and _match(item, kind, value):
                hit = (kind, value)
                break
        if hit:
            _hits[hit] += 1
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    # A selection narrowed by -k or paths legitimately misses entries; only a full run checks.
    full = not config.getoption("keyword") and [str(a) for a in config.args] == ["tests"]
    unused = [f"{k} {v}" for (k, v), c in _hits.items() if c == 0]
    if full and unused:
        raise pytest.UsageError("compat deselect entries matching no test: " + "; ".join(unused))


def pytest_report_header(config):
    if _entries:
        return f"compat: {len(_entries)} deselect entries from {os.environ.get('COMPAT_DESELECT')}"


def pytest_terminal_summary(terminalreporter):
    if _entries:
        counts = ", ".join(f"{k} {v}: {c}" for (k, v), c in _hits.items())
        terminalreporter.write_line(f"compat deselected: {counts}")
