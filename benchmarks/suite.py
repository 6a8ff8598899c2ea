"""The project's benchmark suite: standard workloads under every runner, with runqy-python 0.2.2 as the baseline.

    .venv/bin/python benchmarks/suite.py [--markdown] [--rounds 3] [--only no-op,sleep] [--scale 1.0]

Workloads: a no-op, a 10 ms sleep, 10 ms of pure-Python arithmetic (holds the GIL,
fixed work calibrated on this machine, not a time-based spin), and SHA-256 of a 4 MiB
buffer (C code that releases the GIL). Each worker is the same script, differing from
runqy-python's only in its import line, started as ``python worker.py`` the way the
Go worker starts it, with the runner chosen through ``RUNQY_RUNNER_CLS``. Tasks go
through runqy's local driver with a fixed number in flight; throughput, latency, CPU
and peak memory per process are printed side by side. runqy-python 0.2.2 is installed
from PyPI into ``.bench/`` (it is put on ``PYTHONPATH`` of its own workers only).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from runqy.local.bench import BenchResult, available_runners, measure

ROOT = Path(__file__).resolve().parent.parent
BASELINE_DIR = ROOT / ".bench" / "runqy-python-0.2.2"
BASELINE = "runqy-python 0.2.2"
BASELINE_PIN = "runqy-python==0.2.2"

WORKER = """
import hashlib, time
from {module} import task, run

BUFFER = bytes(4 * 1024 * 1024)

@task
def handle(payload):
    kind = payload["kind"]
    if kind == "sleep":
        time.sleep(payload["s"])
    elif kind == "spin":
        x = 0
        for i in range(payload["n"]):
            x += i * i
    elif kind == "hash":
        hashlib.sha256(BUFFER).hexdigest()
    return None

if __name__ == "__main__":
    run()
"""


# A worker with no SDK and no handler: it answers each request line the moment it reads it.
# Its throughput is the ceiling of the driver and the pipes: figures near it say more about the driver.
BARE_WORKER = """
import os, re
TASK_ID = re.compile(rb'"task_id":"([^"]*)"')
os.write(1, b'{"status":"ready"}\\n')
rest = b""
while chunk := os.read(0, 1 << 16):
    *lines, rest = (rest + chunk).split(b"\\n")
    os.write(1, b"".join(
        b'{"task_id":"%s","result":null,"error":null,"retry":false}\\n' % TASK_ID.search(line).group(1)
        for line in lines if line.strip()
    ))
"""
BARE = "bare echo, no SDK"


@dataclass
class Workload:
    name: str
    payload: dict[str, object]
    tasks: int
    concurrency: int
    #: Extra runs beyond the standard ones: (label, runner, extra environment, concurrency, tasks).
    extras: list[tuple[str, str, dict[str, str], int, int]] = field(default_factory=list)
    #: Also measure the bare echo worker: the driver's own ceiling.
    with_ceiling: bool = False


def spin_iterations(target_s: float) -> int:
    """How many loop iterations of the spin workload take ``target_s`` on this machine (best of 5)."""
    n = 100_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        x = 0
        for i in range(n):
            x += i * i
        best = min(best, time.perf_counter() - started)
    return int(n * target_s / best)


def workloads(scale: float) -> list[Workload]:
    def count(n: int) -> int:
        return max(16, int(n * scale))

    return [
        Workload(
            "no-op",
            {"kind": "noop"},
            count(20_000),
            64,
            # A timeout that never fires must cost little (thread runner issue: at most 2x per no-op task).
            extras=[
                ("sequential, timeout set", "sequential", {"RUNQY_TASK_TIMEOUT_S": "60"}, 64, count(20_000)),
                ("thread, timeout set", "thread", {"RUNQY_TASK_TIMEOUT_S": "60"}, 64, count(20_000)),
            ],
            with_ceiling=True,
        ),
        Workload(
            "sleep 10 ms",
            {"kind": "sleep", "s": 0.01},
            count(200),
            16,
            extras=[
                ("thread x32", "thread", {"RUNQY_RUNNER__MAX_THREADS": "32"}, 32, count(640)),
                (
                    "hybrid 2x8",
                    "hybrid",
                    {"RUNQY_RUNNER__NUM_PROCESSES": "2", "RUNQY_RUNNER__THREADS_PER_PROCESS": "8"},
                    16,
                    count(320),
                ),
            ],
        ),
        Workload("spin 10 ms", {"kind": "spin", "n": spin_iterations(0.01)}, count(100), 16),
        Workload("sha256 4 MiB", {"kind": "hash"}, count(100), 16),
    ]


def install_baseline() -> None:
    if not (BASELINE_DIR / "runqy_python").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(BASELINE_DIR),
                "runqy-python==0.2.2",
            ],
            check=True,
        )


def run_workload(workload: Workload, folder: Path, runners: list[str], rounds: int) -> list[BenchResult]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNQY_")}
    baseline_script, runqy_script = folder / "baseline_worker.py", folder / "runqy_worker.py"
    baseline_script.write_text(WORKER.format(module="runqy_python"))
    runqy_script.write_text(WORKER.format(module="runqy"))
    plans = [(BASELINE, baseline_script, {"PYTHONPATH": str(BASELINE_DIR)}, workload.concurrency, workload.tasks)]
    plans += [
        (name, runqy_script, {"RUNQY_RUNNER_CLS": name}, workload.concurrency, workload.tasks) for name in runners
    ]
    plans += [
        (label, runqy_script, {"RUNQY_RUNNER_CLS": runner, **extra}, concurrency, tasks)
        for label, runner, extra, concurrency, tasks in workload.extras
        if runner in runners
    ]
    if workload.with_ceiling:
        bare_script = folder / "bare_worker.py"
        bare_script.write_text(BARE_WORKER)
        plans.insert(0, (BARE, bare_script, {}, workload.concurrency, workload.tasks))
    runs: dict[str, list[BenchResult]] = {label: [] for label, *_ in plans}
    # Rounds alternate the runners, so that noise from other work on the machine hits them alike.
    for round_number in range(rounds):
        for label, script, extra_env, concurrency, tasks in plans:
            print(f"  {workload.name}: {label}, round {round_number + 1}", file=sys.stderr, flush=True)
            result = measure(
                label,
                [sys.executable, str(script)],
                [workload.payload],
                tasks=tasks,
                concurrency=concurrency,
                env={**env, **extra_env},
            )
            runs[label].append(result)
    # The run with the median throughput stands for each runner.
    return [sorted(results, key=lambda r: r.summary.tasks_per_s)[len(results) // 2] for results in runs.values()]


def table(rows: list[tuple[str, list[BenchResult]]], markdown: bool) -> str:
    header = ["workload", "runner", "in flight", "tasks/s", "p50 ms", "p99 ms", "vs 0.2.2", "vs sequential", "CPU %"]
    header += ["CPU us/task"]
    header += ["procs", "peak RSS/proc"]
    lines = []
    for workload, results in rows:
        by_name = {r.name: r for r in results}
        base, seq = by_name.get(BASELINE), by_name.get("sequential")
        for r in results:
            rate = r.summary.tasks_per_s
            lines.append(
                [
                    workload,
                    r.name,
                    str(r.concurrency),
                    f"{rate:,.0f}" if rate >= 1000 else f"{rate:.1f}",
                    f"{r.summary.latency_percentile_s(50) * 1000:.2f}",
                    f"{r.summary.latency_percentile_s(99) * 1000:.2f}",
                    f"{rate / base.summary.tasks_per_s:.2f}x" if base and r.name != BARE else "-",
                    f"{rate / seq.summary.tasks_per_s:.2f}x" if seq and r.name not in (BASELINE, BARE) else "-",
                    f"{r.cpu_percent:.0f}",
                    f"{r.usage.cpu_s / max(1, r.summary.total) * 1e6:,.1f}",
                    str(r.usage.processes),
                    f"{r.usage.peak_rss_bytes / 2**20:.1f} MiB",
                ]
            )
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(x, widths, strict=True)) for x in [header, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--only", help="comma-separated workload names to run (no-op, sleep, spin, sha256)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per runner; the median throughput is shown")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task count (0.2 for a quick look)")
    args = parser.parse_args()
    install_baseline()
    runners = available_runners()
    chosen = [w for w in workloads(args.scale) if not args.only or any(k in w.name for k in args.only.split(","))]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workload in chosen:
            rows.append((workload.name, run_workload(workload, Path(folder), runners, args.rounds)))
    print(
        f"runqy benchmark suite: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, runners {', '.join(runners)}, median of {args.rounds} rounds; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
