"""Dynamic batching: throughput on one simulated device and on the real embedding model, and low-load latency.

    .venv/bin/python benchmarks/bench_batching.py [--rounds 3] [--skip-embed] [--only-async]

Every figure comes from one run, with the compared cases alternated per round so that
machine noise hits them alike; each prints the best round.

1. One device: a handler holds one process-wide lock for 20 ms + 0.2 ms per item (a
   single accelerator cannot run two calls at once). 64 in flight on the thread runner
   (8 threads): ``batch_size=32`` against the same handler unbatched.
2. The embedding example (needs the ``embed`` extra), 32 in flight: runqy with
   ``batch_size=32`` against the bare model called in a plain loop in batches of 32 (the
   same onnxruntime settings: runqy's overhead), and the best batched configuration
   against the best unbatched one (sequential, and two threads with one onnxruntime
   thread per call or with its default).
3. One in flight, ``max_wait_ms=0``: p50 latency of a no-op batch handler against the
   unbatched one, on the thread runner.
4. The async runner: the one device as an ``async def`` handler awaiting an
   ``asyncio.Lock``, 64 in flight, unbatched against ``batch_size=32`` with 2 slots and
   with the default 1000; and the p50 latency at one in flight, as in 3.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from runqy import Registry, Worker, load_settings

DEVICE = threading.Lock()
DEVICE_FIXED_S, DEVICE_PER_ITEM_S = 0.020, 0.0002


def device_call(items: int) -> None:
    with DEVICE:
        time.sleep(DEVICE_FIXED_S + DEVICE_PER_ITEM_S * items)


def device_registry(batch_size: int | None) -> Registry:
    registry = Registry()
    if batch_size is None:
        registry.task(lambda payload: device_call(1))
    else:
        registry.task(batch_size=batch_size)(lambda payloads: [device_call(len(payloads))] * len(payloads))
    return registry


def tasks_per_s(registry: Registry, tasks: int, threads: int, in_flight: int) -> float:
    with Worker(load_settings(runner_cls="thread", runner={"max_threads": threads}), registry) as worker:
        worker.map(range(threads))  # warm up: threads started, @load done
        started = time.perf_counter()
        _map_window(worker, tasks, in_flight)
        return tasks / (time.perf_counter() - started)


def _map_window(worker: Worker, tasks: int, in_flight: int) -> None:
    """Keep ``in_flight`` tasks outstanding, as the Go worker does, until ``tasks`` are answered."""
    from runqy.protocol import TaskRequest

    room = threading.Semaphore(in_flight)
    done = threading.Semaphore(0)

    def reply(_: object) -> None:
        room.release()
        done.release()

    for n in range(tasks):
        room.acquire()
        worker.runner.submit(TaskRequest(f"t{n}", {"text": SENTENCES[n % len(SENTENCES)]}), reply)
    for _ in range(tasks):
        done.acquire()


WORDS = [
    "the",
    "a",
    "worker",
    "queue",
    "task",
    "model",
    "vector",
    "search",
    "text",
    "batch",
    "thread",
    "result",
    "embedding",
    "sentence",
]
SENTENCES = [
    " ".join(WORDS[(n * 7 + k) % len(WORDS)] for k in range(10 + n % 11)).capitalize() + "." for n in range(512)
]


def best(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            results[name].append(case())
    return {name: max(values) for name, values in results.items()}


def device(rounds: int) -> None:
    figures = best(
        rounds,
        {
            "unbatched": lambda: tasks_per_s(device_registry(None), 200, 8, 64),
            "batch_size=32": lambda: tasks_per_s(device_registry(32), 2000, 8, 64),
        },
    )
    for name, value in figures.items():
        print(f"device   {name:<22} {value:8.0f} tasks/s")
    print(f"device   batched / unbatched     {figures['batch_size=32'] / figures['unbatched']:8.1f}x  (target >= 15)")


def embed(rounds: int) -> None:
    from runqy.examples import embed as example

    # onnxruntime's own threads: the default (one per core) for one call at a time, one
    # per call when two runner threads call at once, so that neither oversubscribes the cores.
    models = {"default": example.Embedder(), "1": example.Embedder(intra_op_threads=1)}

    def bare(size: int) -> Callable[[], float]:
        def case() -> float:
            started = time.perf_counter()
            for start in range(0, 512, size):
                models["default"].embed(SENTENCES[start : start + size])
            return 512 / (time.perf_counter() - started)

        return case

    def served(runner: dict[str, Any], batch_size: int | None, intra_op: str) -> Callable[[], float]:
        def case() -> float:
            registry = Registry()
            registry.load(lambda: models[intra_op])
            if batch_size is None:
                registry.task(lambda payload, m: m.embed([payload["text"]])[0].tolist())
            else:
                registry.task(batch_size=batch_size)(example.handle)
            with Worker(load_settings(**runner), registry) as worker:
                worker.map([{"text": "warm up"}] * 4)
                started = time.perf_counter()
                _map_window(worker, 512, 32)
                return 512 / (time.perf_counter() - started)

        return case

    sequential = {"runner_cls": "sequential"}
    threads = {"runner_cls": "thread", "runner": {"max_threads": 2}}
    batched_cases = {
        "sequential, batch_size=32": served(sequential, 32, "default"),
        # 16 each: with 32 in flight, one thread taking batches of 32 would leave the other idle.
        "thread x2, batch_size=16, 1 op thread": served(threads, 16, "1"),
    }
    unbatched_cases = {
        "sequential, unbatched": served(sequential, None, "default"),
        "thread x2, unbatched": served(threads, None, "default"),
        "thread x2, unbatched, 1 op thread": served(threads, None, "1"),
    }
    bare_cases = {"bare model, batches of 32": bare(32), "bare model, one text per call": bare(1)}
    figures = best(rounds, {**bare_cases, **batched_cases, **unbatched_cases})
    for name, value in figures.items():
        print(f"embed    {name:<38} {value:8.0f} texts/s")
    bare_figure = figures["bare model, batches of 32"]
    same_config = figures["sequential, batch_size=32"]
    batched = max(figures[name] for name in batched_cases)
    unbatched = max(figures[name] for name in unbatched_cases)
    own_gain = bare_figure / figures["bare model, one text per call"]
    print(f"embed    the model's own gain from batches of 32    {own_gain:8.2f}x  (the most batching can give)")
    print(f"embed    sequential batched / bare model            {same_config / bare_figure:8.2f}x  (target >= 0.9)")
    print(f"embed    best batched / best unbatched              {batched / unbatched:8.2f}x  (target >= 1.15)")


def p50_ms(registry: Registry, runner_cls: str = "thread") -> float:
    """Median time from submit to answer of 2000 tasks sent one at a time."""
    from runqy.protocol import TaskRequest

    runner_options = {"max_threads": 2} if runner_cls == "thread" else {}
    with Worker(load_settings(runner_cls=runner_cls, runner=runner_options), registry) as worker:
        runner = worker.runner
        samples = []
        for n in range(2000):
            answered = threading.Event()
            started = time.perf_counter()
            runner.submit(TaskRequest(f"t{n}", n), lambda _, e=answered: e.set())
            answered.wait()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1000


def latency(rounds: int) -> None:
    plain, batched = Registry(), Registry()
    plain.task(lambda payload: payload)
    batched.task(batch_size=32, max_wait_ms=0)(lambda payloads: payloads)
    results: dict[str, list[float]] = {"unbatched": [], "batch_size=32": []}
    for _ in range(rounds):
        results["unbatched"].append(p50_ms(plain))
        results["batch_size=32"].append(p50_ms(batched))
    for name, values in results.items():
        print(f"latency  1 in flight, {name:<14} p50 {min(values):7.3f} ms")
    gap = min(results["batch_size=32"]) - min(results["unbatched"])
    print(f"latency  batched - unbatched p50     {gap:+7.3f} ms  (target within 1 ms)")


def async_device_registry(batch_size: int | None) -> Registry:
    registry = Registry()

    @registry.load
    async def device_lock() -> asyncio.Lock:
        return asyncio.Lock()

    async def call(items: int, lock: asyncio.Lock) -> None:
        async with lock:
            await asyncio.sleep(DEVICE_FIXED_S + DEVICE_PER_ITEM_S * items)

    async def one(payload: Any, lock: asyncio.Lock) -> None:
        await call(1, lock)

    async def many(payloads: list[Any], lock: asyncio.Lock) -> list[None]:
        await call(len(payloads), lock)
        return [None] * len(payloads)

    if batch_size is None:
        registry.task(one)
    else:
        registry.task(batch_size=batch_size)(many)
    return registry


def async_tasks_per_s(registry: Registry, tasks: int, slots: int) -> float:
    with Worker(load_settings(runner_cls="async", runner={"max_concurrency": slots}), registry) as worker:
        worker.map(range(2))
        started = time.perf_counter()
        _map_window(worker, tasks, 64)
        return tasks / (time.perf_counter() - started)


def async_runner(rounds: int) -> None:
    figures = best(
        rounds,
        {
            "unbatched": lambda: async_tasks_per_s(async_device_registry(None), 100, 1000),
            "batch_size=32, 2 slots": lambda: async_tasks_per_s(async_device_registry(32), 2000, 2),
            "batch_size=32, 1000 slots": lambda: async_tasks_per_s(async_device_registry(32), 200, 1000),
        },
    )
    for name, value in figures.items():
        print(f"async    device {name:<26} {value:8.0f} tasks/s")

    async def echo(payload: Any) -> Any:
        return payload

    async def echo_all(payloads: list[Any]) -> list[Any]:
        return payloads

    plain, batched = Registry(), Registry()
    plain.task(echo)
    batched.task(batch_size=32, max_wait_ms=0)(echo_all)
    results: dict[str, list[float]] = {"unbatched": [], "batch_size=32": []}
    for _ in range(rounds):
        results["unbatched"].append(p50_ms(plain, "async"))
        results["batch_size=32"].append(p50_ms(batched, "async"))
    for name, values in results.items():
        print(f"async    1 in flight, {name:<14} p50 {min(values):7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--only-embed", action="store_true", help="run only part 2, the embedding model")
    parser.add_argument("--only-async", action="store_true", help="run only part 4, the async runner")
    args = parser.parse_args()
    if args.only_async:
        async_runner(args.rounds)
        return
    if args.only_embed:
        embed(args.rounds)
        return
    device(args.rounds)
    latency(args.rounds)
    async_runner(args.rounds)
    if not args.skip_embed:
        embed(args.rounds)


if __name__ == "__main__":
    main()
