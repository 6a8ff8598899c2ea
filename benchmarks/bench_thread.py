"""Benchmarks of the thread runner against the sequential runner; prints figures, asserts nothing.

    python benchmarks/bench_thread.py [--quick]

Each figure is the best of ``--repeat`` runs, because other processes on the machine
only ever make a run slower. In-process figures drive a runner directly with a fixed
number of tasks in flight, as the Go worker does; protocol figures serve a real worker
process over its stdin/stdout pipes through runqy's local driver.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runqy.app import Registry
from runqy.attempts import RetryPolicy
from runqy.local.driver import LocalWorker, make_request
from runqy.protocol import TaskRequest, TaskResponse
from runqy.runners.base import Runner
from runqy.runners.sequential import SequentialRunner
from runqy.runners.thread import ThreadRunner

sys.path.insert(0, str(Path(__file__).parent))
import bench_worker  # found next to this script

WORKER = str(Path(bench_worker.__file__))
THREADS = 32
IN_FLIGHT = 32


def in_process_rate(make: Callable[[], Runner], payload: Any, tasks: int) -> float:
    """Tasks per second of a runner over ``tasks`` tasks, ``IN_FLIGHT`` at a time."""
    registry = Registry()
    registry.task(bench_worker.handle)
    runner = make()
    runner.start(registry)
    # A token per free slot; a SimpleQueue costs less per task than a Semaphore.
    slots: queue.SimpleQueue[None] = queue.SimpleQueue()
    for _ in range(IN_FLIGHT):
        slots.put(None)

    def reply(_: TaskResponse) -> None:
        slots.put(None)

    requests = [TaskRequest(str(n), payload) for n in range(tasks)]
    started = time.perf_counter()
    for request in requests:
        slots.get()
        runner.submit(request, reply)
    for _ in range(IN_FLIGHT):
        slots.get()
    elapsed = time.perf_counter() - started
    runner.close()
    return tasks / elapsed


def protocol_rate(env: dict[str, str], payload: Any, tasks: int) -> float:
    """Tasks per second of a real worker process served over pipes, ``IN_FLIGHT`` at a time."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNQY_")}
    with LocalWorker.for_target(WORKER, env={**base, **env}) as worker:
        worker.wait_ready()
        requests = [make_request(payload) for _ in range(tasks)]
        started = time.perf_counter()
        outcomes = list(worker.run(requests, IN_FLIGHT))
        elapsed = time.perf_counter() - started
        if worker.shutdown() != 0 or any(o.status != "ok" for o in outcomes):
            raise SystemExit("benchmark worker failed: " + "\n".join(worker.stderr_lines[-20:]))
    return tasks / elapsed


def best(repeat: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer tasks, for a smoke run")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    noop_tasks = int(50_000 * scale)
    r = args.repeat
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {THREADS} threads, {IN_FLIGHT} in flight, best of {r}"
    )

    print("\n1. sleep-10ms tasks, in process")
    seq = best(r, lambda: in_process_rate(SequentialRunner, {"sleep_s": 0.01}, 50))
    thr = best(r, lambda: in_process_rate(lambda: ThreadRunner(THREADS), {"sleep_s": 0.01}, 640))
    print(f"   sequential {seq:8.1f}/s   thread {thr:8.1f}/s   = {thr / (THREADS * seq):.2f} of ideal ({THREADS}x seq)")

    print("\n2. no-op tasks")
    seq = best(r, lambda: in_process_rate(SequentialRunner, None, noop_tasks))
    thr = best(r, lambda: in_process_rate(lambda: ThreadRunner(THREADS), None, noop_tasks))
    print(f"   in process:  sequential {seq:9.0f}/s   thread {thr:9.0f}/s   = {thr / seq:.2f}x")
    pseq = best(r, lambda: protocol_rate({}, None, noop_tasks // 2))
    pthr = best(r, lambda: protocol_rate({"RUNQY_PYTHON_WORKERS": str(THREADS)}, None, noop_tasks // 2))
    print(f"   protocol:    sequential {pseq:9.0f}/s   thread {pthr:9.0f}/s   = {pthr / pseq:.2f}x")

    print("\n3. a task timeout that never fires (task_timeout_s=30), no-op tasks, in process")
    timed = RetryPolicy(task_timeout_s=30.0)
    for name, untimed_make, timed_make in (
        ("sequential", SequentialRunner, lambda: SequentialRunner(timed)),
        ("thread", lambda: ThreadRunner(THREADS), lambda: ThreadRunner(THREADS, timed)),
    ):
        plain = best(r, lambda: in_process_rate(untimed_make, None, noop_tasks))  # noqa: B023 - used at once
        limited = best(r, lambda: in_process_rate(timed_make, None, noop_tasks))  # noqa: B023 - used at once
        print(
            f"   {name:10}  {1e6 / plain:5.1f} us/task without, {1e6 / limited:5.1f} us/task with: "
            f"{plain / limited:.2f}x the cost"
        )

    print("\n4. acceptance: 320 tasks sleeping 20 ms, 32 in flight, real worker process over pipes")
    pseq = best(r, lambda: protocol_rate({}, {"sleep_s": 0.02}, 320))
    pthr = best(r, lambda: protocol_rate({"RUNQY_PYTHON_WORKERS": "32"}, {"sleep_s": 0.02}, 320))
    print(f"   sequential {pseq:7.1f}/s ({320 / pseq:.2f}s)")
    print(f"   RUNQY_PYTHON_WORKERS=32 {pthr:7.1f}/s ({320 / pthr:.2f}s)")
    print(f"   speed-up {pthr / pseq:.1f}x (target >= 25x)")


if __name__ == "__main__":
    main()
