"""An RQ worker, unmodified, against moat (or Redis itself with TARGET=direct).

Usage: rq_scenario.py HOST:PORT

Enqueues a bounded batch of jobs (some failing on purpose), runs a real RQ worker in burst
mode (it forks a work horse per job, registers itself, heartbeats, moves jobs between
registries with MULTI/EXEC and WATCH, and waits on the queue with BLPOP), then checks every
job's result and status. Exits 1 naming the first check that failed.
"""

import os
import sys
import time

import redis
from rq import Queue, Worker
from rq.job import JobStatus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rq_jobs  # noqa: E402

CLIENT = "rq"
JOBS = 300


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    conn = redis.Redis(host=host, port=int(port), socket_timeout=10, socket_connect_timeout=5)
    conn.ping()
    queue = Queue("moat-rq", connection=conn)
    queue.empty()
    started = time.monotonic()
    jobs = [queue.enqueue(rq_jobs.square, n) for n in range(JOBS)]
    failing = [queue.enqueue(rq_jobs.fail_on, n) for n in range(0, 50)]
    print(f"[{CLIENT}] enqueued {len(jobs) + len(failing)} jobs", flush=True)
    worker = Worker([queue], connection=conn, name=f"moat-rq-{os.getpid()}")
    worker.work(burst=True, logging_level="WARNING")
    done = 0
    for n, job in enumerate(jobs):
        job.refresh()
        if job.get_status() != JobStatus.FINISHED or job.return_value() != n * n:
            print(f"[{CLIENT}] FAIL job {n}: {job.get_status()} {job.return_value()!r}")
            return 1
        done += 1
    for n, job in zip(range(0, 50), failing):
        job.refresh()
        want = JobStatus.FAILED if n % 10 == 0 else JobStatus.FINISHED
        if job.get_status() != want:
            print(f"[{CLIENT}] FAIL failing job {n}: {job.get_status()}, want {want}")
            return 1
    if queue.count != 0:
        print(f"[{CLIENT}] FAIL {queue.count} jobs left in the queue")
        return 1
    failed = queue.failed_job_registry.count
    if failed != 5:
        print(f"[{CLIENT}] FAIL {failed} jobs in the failed registry, want 5")
        return 1
    took = time.monotonic() - started
    print(f"[{CLIENT}] ok {done}/{JOBS} jobs finished, 5/5 failures recorded ({took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
