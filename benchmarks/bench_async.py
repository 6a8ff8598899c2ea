"""The async runner under load: tasks in flight, CPU, memory per task, and the no-op overhead.

    .venv/bin/python benchmarks/bench_async.py [--part waiting|timeout|ten-thousand|noop|all] [--rounds 3]

Every worker is a real process driven by the local driver, as the Go worker drives it.

- waiting: 1,000 in flight of ``await asyncio.sleep(0.2)``; the ideal is 5,000 tasks/s.
  The async runner, then the thread runner at its default size on the same load.
- timeout: the same load with ``task_timeout_s=0.3`` and one retry; one task's first
  attempt hangs: how long after it was sent its retry is answered, and how many
  others were answered meanwhile.
- ten-thousand: 10,000 in flight of a 3 s sleep, sent at once: every task answered,
  and the worker's memory per task in flight (peak RSS minus RSS when idle, / 10,000).
- noop: a no-op handler at 8 in flight, rounds alternating between the async runner
  (async def handler), the thread runner on a plain def, and the thread runner on the
  async def (a pool thread waits for each coroutine); the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil

from runqy.local.driver import LocalWorker, make_request
from runqy.local.procstats import TreeSampler
from runqy.local.stats import RunSummary

HERE = Path(__file__).resolve().parent
ASYNC_WORKER = HERE / "async_bench_worker.py"
SYNC_WORKER = HERE / "bench_worker.py"


def start(worker: Path, runner: str, *settings: str) -> LocalWorker:
    argv = [sys.executable, "-m", "runqy", "run", str(worker), "--runner", runner, "--log-level", "WARNING"]
    started = LocalWorker([*argv, *settings])
    started.wait_ready(60)
    return started


def timed_run(worker: LocalWorker, payload: object, tasks: int, in_flight: int) -> tuple[RunSummary, float]:
    """(summary, CPU cores used) of ``tasks`` tasks with ``in_flight`` outstanding."""
    sampler = TreeSampler(worker.pid)
    sampler.start()
    summary = RunSummary()
    started = time.perf_counter()
    for outcome in worker.run([make_request(payload) for _ in range(tasks)], in_flight, deadline_s=600):
        summary.add(outcome)
    summary.elapsed_s = time.perf_counter() - started
    return summary, sampler.stop().cpu_s / summary.elapsed_s


def waiting() -> None:
    print("1,000 in flight, handler: await asyncio.sleep(0.2); ideal 5,000 tasks/s")
    print(f"{'runner':<28} {'tasks':>6} {'tasks/s':>9} {'of ideal':>9} {'CPU cores':>10} {'lost':>5}")
    for label, runner, tasks in (("async", "async", 20_000), ("thread (default size)", "thread", 300)):
        with start(ASYNC_WORKER, runner) as worker:
            if runner == "async":
                timed_run(worker, {"sleep_s": 0.2}, 1_000, 1_000)  # warm-up, not counted
            summary, cores = timed_run(worker, {"sleep_s": 0.2}, tasks, 1_000)
            worker.shutdown("close-stdin")
        rate = summary.tasks_per_s
        lost = tasks - summary.count("ok")
        print(f"{label:<28} {tasks:>6} {rate:>9.1f} {rate / 5_000:>9.3f} {cores:>10.2f} {lost:>5}")


def timeout_retry() -> None:
    settings = ("--task-timeout-s", "0.3", "--max-retries", "1", "--retry-backoff-s", "0")
    with start(ASYNC_WORKER, "async", *settings) as worker:
        requests = [make_request({"sleep_s": 0.2}) for _ in range(5_000)]
        requests.insert(2_500, make_request({"hang_first": True}, task_id="hangs"))
        outcomes = list(worker.run(requests, 1_000, deadline_s=120))
        worker.shutdown("close-stdin")
    hung = next(o for o in outcomes if o.request["task_id"] == "hangs")
    meanwhile = sum(hung.sent_at < o.answered_at < hung.answered_at for o in outcomes)
    ok = sum(o.status == "ok" for o in outcomes)
    print(
        f"timeout 0.3 s, one retry, 1,000 in flight of 0.2 s: the hanging task answered {hung.status} "
        f"{hung.latency_s:.3f} s after it was sent; {meanwhile} others answered meanwhile; {ok}/{len(outcomes)} ok"
    )


def ten_thousand() -> None:
    with start(ASYNC_WORKER, "async", "--max-concurrency", "10000") as worker:
        process = psutil.Process(worker.pid)
        timed_run(worker, {"sleep_s": 0.0}, 2_000, 1_000)  # warm-up: the loop and the codec paths are built
        idle_rss = process.memory_info().rss
        sampler = TreeSampler(worker.pid)
        sampler.start()
        summary, _ = timed_run(worker, {"sleep_s": 3.0}, 10_000, 10_000)
        peak_rss = sampler.stop().peak_rss_bytes
        code = worker.shutdown("close-stdin")
    per_task = (peak_rss - idle_rss) / 10_000
    print(
        f"10,000 in flight (3 s sleep): {summary.count('ok')} ok, {10_000 - summary.count('ok')} not ok, "
        f"{summary.elapsed_s:.2f} s, exit {code}; "
        f"RSS idle {idle_rss / 2**20:.1f} MiB, peak {peak_rss / 2**20:.1f} MiB: "
        f"{per_task / 1024:.1f} KiB per task in flight"
    )


def noop(rounds: int, tasks: int = 20_000) -> None:
    contenders = {
        "async runner, async def": (ASYNC_WORKER, "async"),
        "thread runner, plain def": (SYNC_WORKER, "thread"),
        "thread runner, async def": (ASYNC_WORKER, "thread"),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (script, runner) in contenders.items():
            with start(script, runner) as worker:
                timed_run(worker, None, 2_000, 8)  # warm-up
                summary, _ = timed_run(worker, None, tasks, 8)
                worker.shutdown("close-stdin")
            rates[name].append(summary.tasks_per_s)
    print(f"no-op handler, 8 in flight, {tasks} tasks, {rounds} alternating rounds (tasks/s)")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:<26} median {medians[name]:>8.0f}   rounds {', '.join(f'{v:.0f}' for v in values)}")
    base = medians["async runner, async def"]
    print(f"  async / thread (plain def): {base / medians['thread runner, plain def']:.2f}")
    print(f"  async / thread (async def): {base / medians['thread runner, async def']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("waiting", "timeout", "ten-thousand", "noop", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.part in ("waiting", "all"):
        waiting()
    if args.part in ("timeout", "all"):
        timeout_retry()
    if args.part in ("ten-thousand", "all"):
        ten_thousand()
    if args.part in ("noop", "all"):
        noop(args.rounds)


if __name__ == "__main__":
    main()
