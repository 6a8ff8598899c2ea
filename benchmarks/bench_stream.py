"""Stream no-op tasks through a worker as fast as the pipes allow: runqy's sequential runner vs runqy-python 0.2.2.

    .venv/bin/python benchmarks/bench_stream.py [--tasks 50000] [--rounds 3]

Both workers are the same three-line script, differing only in the import. runqy-python
0.2.2 is installed from PyPI into .bench/ (not into the environment, where it would
shadow nothing but would be one more thing to uninstall). Prints tasks/s and µs/task for
each, alternating rounds so that machine noise hits both alike, and the ratio of the
medians. The target is a ratio of at least 1.5.
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
    """Seconds from the first request written to the last response read."""
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    assert b"ready" in process.stdout.readline()
    stdin = process.stdin
    stdout = typing.cast(io.BufferedReader, process.stdout)  # a pipe opened unbuffered=False: has read1

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
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
        for _ in range(args.rounds):
            for name, (script, _, script_env) in scripts.items():
                timings[name].append(stream(script, lines, args.tasks, script_env))
    print(f"{args.tasks} no-op tasks streamed, median of {args.rounds} rounds, {os.cpu_count()} cores")
    for name, runs in timings.items():
        median = statistics.median(runs)
        print(f"  {name:20s} {args.tasks / median:9.0f} tasks/s  {median / args.tasks * 1e6:6.1f} µs/task")
    ratio = statistics.median(timings["runqy-python 0.2.2"]) / statistics.median(timings["runqy sequential"])
    print(f"  runqy / 0.2.2 throughput: {ratio:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
