"""Benchmarks of the process and hybrid runners; prints figures, asserts nothing.

Run from the repository root::

    python benchmarks/bench_process.py

End-to-end figures drive a real worker process over stdin/stdout with the local
driver, as the Go worker would; the runner-level figures (dispatch overhead,
replacement time, idle RSS) use the runner directly.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from runqy.app import default_registry
from runqy.local.driver import LocalWorker, make_request
from runqy.protocol import TaskRequest
from runqy.runners.process import PersistentProcessRunner
from runqy.target import import_target

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "process_bench_worker.py")


def timed_run(runner_options: list[str], payloads: list[dict[str, object]], concurrency: int) -> float:
    """Seconds to answer every payload through a real worker process (start-up excluded)."""
    with LocalWorker.for_target(WORKER, *runner_options) as worker:
        worker.wait_ready()
        started = time.perf_counter()
        outcomes = list(worker.run((make_request(p) for p in payloads), concurrency))
        elapsed = time.perf_counter() - started
        bad = [o for o in outcomes if o.status != "ok"]
        assert not bad, bad[:1]
        worker.shutdown()
    return elapsed


def bench_cpu() -> None:
    payloads: list[dict[str, object]] = [{"do": "spin", "ms": 20}] * 40
    sequential = timed_run(["--runner", "sequential"], payloads, 2)
    process = timed_run(["--runner", "process", "--num-processes", "2"], payloads, 2)
    print(
        f"cpu: 40 x 20 ms spin, 2 in flight: sequential {sequential:.3f}s, 2 processes {process:.3f}s "
        f"-> {sequential / process:.2f}x (acceptance >= 1.6x, target 1.8x)"
    )


def bench_hybrid() -> None:
    payloads: list[dict[str, object]] = [{"do": "sleep", "ms": 20}] * 160
    sequential = timed_run(["--runner", "sequential"], payloads, 16)
    hybrid = timed_run(["--runner", "hybrid", "--num-processes", "2", "--threads-per-process", "8"], payloads, 16)
    print(
        f"io: 160 x 20 ms sleep, 16 in flight: sequential {sequential:.3f}s, hybrid 2x8 {hybrid:.3f}s "
        f"-> {sequential / hybrid:.1f}x (acceptance >= 12x)"
    )


def bench_noop_overhead(count: int = 3000) -> None:
    for name, options in (
        ("sequential", ["--runner", "sequential"]),
        ("process x1", ["--runner", "process", "--num-processes", "1"]),
    ):
        elapsed = timed_run(options, [{"do": "noop"}] * count, 1)
        print(f"no-op end to end, 1 in flight, {name}: {elapsed / count * 1e6:.0f} us per task")
    with started_runner("spawn") as runner:
        request = TaskRequest("t", {"do": "noop"})
        for _ in range(200):
            runner.run_task(request)
        began = time.perf_counter()
        for _ in range(count):
            runner.run_task(request)
        per_task = (time.perf_counter() - began) / count
    print(f"no-op runner round trip (submit -> child -> reply), process x1: {per_task * 1e6:.0f} us per task")


def bench_replacement_and_rss(start_method: str, rounds: int = 7) -> None:
    """Through a real worker (`runqy run`), so that children import what a deployed worker's children do."""
    options = ["--runner", "process", "--num-processes", "1", "--task-timeout-s", "0.2"]
    gaps: list[float] = []
    with LocalWorker.for_target(WORKER, *options, "--start-method", start_method) as worker:
        worker.wait_ready()
        child = psutil.Process(worker.call({"do": "pid"})["result"])
        memory = child.memory_full_info()
        for _ in range(rounds):
            timed_out = worker.call({"do": "hang"})  # answered when the child's group is killed
            assert "timed out" in timed_out["error"], timed_out
            killed_at = time.perf_counter()
            worker.call({"do": "noop"})
            gaps.append(time.perf_counter() - killed_at)
        worker.shutdown()
    print(
        f"idle child ({start_method}): RSS {memory.rss / 2**20:.1f} MiB, USS {memory.uss / 2**20:.1f} MiB "
        "(target RSS <= 25 MiB; the child imports runqy and this worker only)"
    )
    print(
        f"timed-out child killed -> replacement answered a task ({start_method}): "
        f"median {statistics.median(gaps) * 1000:.0f} ms, min {min(gaps) * 1000:.0f} ms, "
        f"max {max(gaps) * 1000:.0f} ms over {rounds} (target <= 100 ms)"
    )


@contextlib.contextmanager
def started_runner(start_method: str) -> Iterator[PersistentProcessRunner]:
    import_target(WORKER)  # registers the handler in the default registry, as `runqy run` does
    runner = PersistentProcessRunner(num_processes=1, start_method=start_method)
    runner.start(default_registry)
    try:
        yield runner
    finally:
        runner.close()


def main() -> None:
    logging.getLogger("runqy").setLevel(logging.ERROR)  # the timeouts below are on purpose
    print(
        f"python {sys.version.split()[0]}, {psutil.cpu_count(logical=False)} physical / "
        f"{psutil.cpu_count()} logical cores, load average {psutil.getloadavg()[0]:.2f}"
    )
    bench_cpu()
    bench_hybrid()
    bench_noop_overhead()
    for start_method in ("spawn", "forkserver"):
        bench_replacement_and_rss(start_method)


if __name__ == "__main__":
    main()
