"""Stream no-op tasks through a worker as fast as the pipes allow: runqy's sequential runner vs runqy-python 0.2.2.

    .venv/bin/python benchmarks/bench_stream.py [--tasks 50000] [--rounds 3] [--round-trips 3000]

Both workers are the same three-line script, differing only in the import. runqy-python
0.2.2 is installed from PyPI into .bench/ (not into the environment, where it would
shadow nothing but would be one more thing to uninstall). Prints tasks/s and µs/task for
each, alternating rounds so that machine noise hits both alike, and the ratio of the
medians. The target is a ratio of at least 1.5. Then the median round trip of tasks sent
one at a time, as the Go worker does at concurrency 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing
from pathlib import Path

from suite import BASELINE_DIR, install_baseline  # the same pinned baseline, in the same place

WORKER = """
from {module} import task, run

@task
def handle(payload):
    return payload

run()
"""


def request_lines(count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "task_id": f"{i:08d}-0000-4000-8000-000000000000",
                "type": "bench",
                "payload": {"i": i},
                "retry_count": 0,
                "max_retry": 3,
                "queue": "bench.default",
            }
        ).encode()
        + b"\n"
        for i in range(count)
    )


def stream(script: Path, lines: bytes, count: int, env: dict[str, str]) -> float:
    """Seconds from the first request written to the last response read.

    One request is answered before the clock starts, for both workers alike: what a
    worker does once, before its first task (runqy builds its request parser beside its
    start), is start-up, measured by bench_startup.py, not a cost of each task.
    """
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    assert b"ready" in process.stdout.readline()
    stdin = process.stdin
    stdout = typing.cast(io.BufferedReader, process.stdout)  # a pipe opened unbuffered=False: has read1
    stdin.write(b'{"task_id": "warm-up", "payload": {"i": -1}}\n')
    stdin.flush()
    assert b"warm-up" in stdout.readline()

    def write_all() -> None:
        stdin.write(lines)
        stdin.close()

    started = time.perf_counter()
    writer = threading.Thread(target=write_all)
    writer.start()
    answered = 0
    while answered < count:
        chunk = stdout.read1(1 << 20)
        if not chunk:
            raise RuntimeError(f"worker stopped after {answered} of {count} responses")
        answered += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    writer.join()
    process.wait()
    return elapsed


def round_trips(script: Path, lines: bytes, count: int, env: dict[str, str]) -> float:
    """Median seconds from writing one request to reading its response, one task in flight at a time."""
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    assert b"ready" in process.stdout.readline()
    stdin_fd, stdout_fd = process.stdin.fileno(), process.stdout.fileno()
    seconds = []
    for line in lines.splitlines(keepends=True)[:count]:
        started = time.perf_counter()
        os.write(stdin_fd, line)
        answer = os.read(stdout_fd, 1 << 16)
        while not answer.endswith(b"\n"):
            answer += os.read(stdout_fd, 1 << 16)
        seconds.append(time.perf_counter() - started)
    process.stdin.close()
    process.wait()
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=3000, help="tasks sent one at a time (0 to skip)")
    args = parser.parse_args()
    install_baseline()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQY_")}
    lines = request_lines(args.tasks)
    timings: dict[str, list[float]] = {"runqy-python 0.2.2": [], "runqy sequential": []}
    with tempfile.TemporaryDirectory() as folder:
        scripts = {
            "runqy-python 0.2.2": (
                Path(folder, "baseline.py"),
                "runqy_python",
                {**env, "PYTHONPATH": str(BASELINE_DIR)},
            ),
            "runqy sequential": (Path(folder, "runqy_worker.py"), "runqy", env),
        }
        for script, module, _ in scripts.values():
            script.write_text(WORKER.format(module=module))
        latencies: dict[str, list[float]] = {name: [] for name in scripts}
        for _ in range(args.rounds):
            for name, (script, _, script_env) in scripts.items():
                timings[name].append(stream(script, lines, args.tasks, script_env))
                if args.round_trips:
                    latencies[name].append(round_trips(script, lines, args.round_trips, script_env))
    print(f"{args.tasks} no-op tasks streamed, median of {args.rounds} rounds, {os.cpu_count()} cores")
    for name, runs in timings.items():
        median = statistics.median(runs)
        print(f"  {name:20s} {args.tasks / median:9.0f} tasks/s  {median / args.tasks * 1e6:6.1f} µs/task")
    ratio = statistics.median(timings["runqy-python 0.2.2"]) / statistics.median(timings["runqy sequential"])
    print(f"  runqy / 0.2.2 throughput: {ratio:.2f}x (target >= 1.5x)")
    if args.round_trips:
        print(f"{args.round_trips} no-op tasks one at a time (the Go worker at concurrency 1), median round trip")
        for name, runs in latencies.items():
            print(f"  {name:20s} {statistics.median(runs) * 1e6:9.1f} µs")


if __name__ == "__main__":
    main()
