"""Jobs for rq_scenario.py: importable by RQ's workers by module name."""


def square(n):
    return n * n


def fail_on(n):
    if n % 10 == 0:
        raise ValueError(f"job {n} fails on purpose")
    return n
