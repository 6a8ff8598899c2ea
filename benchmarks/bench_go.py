"""No-op tasks through the real Go worker's code (go-driver) and through `runqy local`: every runner vs 0.2.2.

    .venv/bin/python benchmarks/bench_go.py [--go-driver PATH] [--tasks N] [--rounds 5] [--in-flight 1,8]
        [--set RUNQY_NAME=VALUE ...]

go-driver runs runqy-worker's own ``ProcessSupervisor`` and ``StdioHandler``: it starts
the worker as a deployment does, waits for the ready line, and keeps ``-c`` requests
in flight, each goroutine writing one request and waiting for its answer. Build it
once per machine (see ../shared/go-driver/README.md); its path comes from
``--go-driver``, else ``$RUNQY_GO_DRIVER``, else ``~/go-driver/go-driver``. Without
it, this script says so and exits 0.

Every worker is the same three-line echo script, differing only in its import line
(the bare loop has no SDK: it answers each line as it reads it, the ceiling of the
driver and the pipes). Rounds alternate the workers so that machine noise hits them
alike; the run with the median throughput stands for each. The same loads then go
through ``runqy local``'s driver, so both drivers are on record.

Throughput is what a worker sustains once started, so a run is long (by default
20,000 tasks at 1 in flight, 100,000 above: a second or more each); start-up has
rows of its own. Each round also starts every worker for one task, which gives the
time from spawn to the ready line and from the ready line to the first answer: a
worker may say it is ready before it is done preparing (runqy builds its request
parser beside its start), and the Go worker sends its first request at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from suite import BARE, BASELINE, BASELINE_DIR, install_baseline

from runqy.local.bench import measure

DEFAULT_DRIVER = Path.home() / "go-driver" / "go-driver"

# The bare loop echoes too, so that every worker is checked the same way (-expect echo). Go
# marshals a request's fields in order: task_id, type, payload, retry_count, ...
BARE_ECHO = """
import os
os.write(1, b'{"status":"ready"}\\n')
rest = b""
while chunk := os.read(0, 1 << 16):
    *lines, rest = (rest + chunk).split(b"\\n")
    out = []
    for line in lines:
        if line.strip():
            start = line.index(b'"task_id":"') + 11
            task_id = line[start:line.index(b'"', start)]
            payload = line[line.index(b'"payload":') + 10:line.rindex(b',"retry_count":')]
            out.append(b'{"task_id":"%s","result":%s,"error":null,"retry":false}\\n' % (task_id, payload))
    os.write(1, b"".join(out))
"""

WORKER = """
from {module} import task, run

@task
def handle(payload):
    return payload

run()
"""


@dataclass(frozen=True)
class Contender:
    label: str
    script: str  # "bare", "baseline" or "runqy"
    env: dict[str, str]


CONTENDERS = [
    Contender(BARE, "bare", {}),
    Contender(BASELINE, "baseline", {"PYTHONPATH": str(BASELINE_DIR)}),
    Contender("sequential", "runqy", {"RUNQY_RUNNER_CLS": "sequential"}),
    Contender("thread(16)", "runqy", {"RUNQY_RUNNER_CLS": "thread", "RUNQY_RUNNER__MAX_THREADS": "16"}),
    Contender("process(2)", "runqy", {"RUNQY_RUNNER_CLS": "process", "RUNQY_RUNNER__NUM_PROCESSES": "2"}),
    Contender(
        "hybrid(2x8)",
        "runqy",
        {"RUNQY_RUNNER_CLS": "hybrid", "RUNQY_RUNNER__NUM_PROCESSES": "2", "RUNQY_RUNNER__THREADS_PER_PROCESS": "8"},
    ),
]


def find_driver(option: str | None, script: str) -> Path | None:
    """go-driver's path; None, after saying how to build it, when it is not built (nothing is measured then)."""
    path = Path(option or os.environ.get("RUNQY_GO_DRIVER") or DEFAULT_DRIVER).expanduser()
    if path.is_file() and os.access(path, os.X_OK):
        return path
    print(
        f"{script}: go-driver is not built on this machine; build it as ../shared/go-driver/README.md says, "
        "then pass --go-driver PATH or set RUNQY_GO_DRIVER. Nothing measured."
    )
    return None


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    # Variables that would change what is measured: another PYTHONPATH, unbuffered stdio, no bytecode cache.
    dropped = ("PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQY_") and k not in dropped}
    return {**env, **extra}


def go_command(driver: Path, worker: str, tasks: int, in_flight: int) -> list[str]:
    """go-driver's command line for a run of ``worker`` (a command line, which go-driver splits on spaces)."""
    return [
        str(driver),
        *("-n", str(tasks), "-c", str(in_flight), "-payload", '{"i":{i}}', "-expect", "echo"),
        *("-shutdown", "close-stdin", "-v", "0", "-cmd", worker),
    ]


def go_run(driver: Path, worker: str, contender: Contender, tasks: int, in_flight: int) -> dict[str, float]:
    """One go-driver run of ``worker`` (a command line, which go-driver splits on spaces)."""
    command = go_command(driver, worker, tasks, in_flight)
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(contender.env), timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"go-driver failed for {contender.label}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["ok"] != tasks:
        raise SystemExit(f"{contender.label}: {result['ok']} of {tasks} tasks answered correctly: {result}")
    return {"tasks_per_s": result["tasks_per_s"], "p50_ms": result["p50_ms"], "startup_ms": result["startup_ms"]}


def default_tasks(in_flight: int) -> int:
    """Tasks per run: about a second or more of work for every worker at that load."""
    return 20000 if in_flight == 1 else 100000


def local_run(script: Path, contender: Contender, tasks: int, in_flight: int) -> dict[str, float]:
    result = measure(
        contender.label,
        [sys.executable, str(script)],
        [{"i": 0}],
        tasks=tasks,
        concurrency=in_flight,
        env=clean_env(contender.env),
    )
    return {"tasks_per_s": result.summary.tasks_per_s, "p50_ms": result.summary.latency_percentile_s(50) * 1000}


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(runs, key=lambda run: run["tasks_per_s"])
    return ordered[len(ordered) // 2]


def table(
    title: str, figures: dict[int, dict[str, dict[str, float]]], starts: dict[str, list[dict[str, float]]] | None
) -> str:
    labels = [c.label for c in CONTENDERS]
    lines = [f"**{title}**", "", "| load | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for in_flight, by_label in figures.items():
        base = by_label[BASELINE]["tasks_per_s"]
        cells = []
        for label in labels:
            rate = by_label[label]["tasks_per_s"]
            ratio = "" if label in (BARE, BASELINE) else f" ({rate / base:.2f}x)"
            cells.append(f"{rate:,.0f}/s{ratio}")
        lines.append(f"| no-op, {in_flight} in flight | " + " | ".join(cells) + " |")
        cells = [f"{by_label[label]['p50_ms'] * 1000:,.0f} µs" for label in labels]
        lines.append(f"| p50 round trip, {in_flight} in flight | " + " | ".join(cells) + " |")
    if starts is not None:
        ready = {label: statistics.median(run["startup_ms"] for run in starts[label]) for label in labels}
        first = {label: statistics.median(run["p50_ms"] for run in starts[label]) for label in labels}
        lines.append("| spawn to ready line | " + " | ".join(f"{ready[label]:.0f} ms" for label in labels) + " |")
        cells = [f"{first[label]:.1f} ms" for label in labels]
        lines.append("| ready line to first answer | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--go-driver", help="path of the go-driver binary (default: $RUNQY_GO_DRIVER or ~/go-driver)")
    parser.add_argument(
        "--tasks", type=int, help="tasks per run (default 20000 at 1 in flight, 100000 at more: steady throughput)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median run is shown")
    parser.add_argument("--in-flight", default="1,8", help="comma-separated requests in flight (default 1,8)")
    parser.add_argument("--skip-local", action="store_true", help="only the Go driver")
    parser.add_argument(
        "--set", action="append", default=[], metavar="RUNQY_NAME=VALUE", help="a setting of every runqy worker"
    )
    parser.add_argument(
        "--only", help="comma-separated labels of the contenders to run (default: all; bare and 0.2.2 always run)"
    )
    args = parser.parse_args()
    driver = find_driver(args.go_driver, "bench_go")
    if driver is None:
        return
    install_baseline()
    if args.only:
        wanted = {BARE, BASELINE, *args.only.split(",")}
        CONTENDERS[:] = [c for c in CONTENDERS if c.label in wanted]
    settings = dict(item.split("=", 1) for item in args.set)
    CONTENDERS[:] = [replace(c, env={**c.env, **settings}) if c.script == "runqy" else c for c in CONTENDERS]
    loads = [int(n) for n in args.in_flight.split(",")]
    drivers = [("go-driver (runqy-worker's StdioHandler)", True)] + (
        [] if args.skip_local else [("runqy local", False)]
    )
    with tempfile.TemporaryDirectory() as folder:
        scripts = {"bare": Path(folder) / "bare.py", "baseline": Path(folder) / "baseline.py"}
        scripts["runqy"] = Path(folder) / "runqy_echo.py"
        scripts["bare"].write_text(BARE_ECHO)
        scripts["baseline"].write_text(WORKER.format(module="runqy_python"))
        scripts["runqy"].write_text(WORKER.format(module="runqy"))
        for title, through_go in drivers:
            runs: dict[int, dict[str, list[dict[str, float]]]] = {n: {c.label: [] for c in CONTENDERS} for n in loads}
            starts: dict[str, list[dict[str, float]]] = {c.label: [] for c in CONTENDERS}
            for round_number in range(args.rounds):
                if through_go:
                    for contender in CONTENDERS:
                        script = scripts[contender.script]
                        starts[contender.label].append(go_run(driver, f"{sys.executable} {script}", contender, 1, 1))
                for in_flight in loads:
                    for contender in CONTENDERS:
                        print(
                            f"  {title}: {contender.label}, {in_flight} in flight, round {round_number + 1}",
                            file=sys.stderr,
                            flush=True,
                        )
                        script = scripts[contender.script]
                        tasks = args.tasks or default_tasks(in_flight)
                        run = (
                            go_run(driver, f"{sys.executable} {script}", contender, tasks, in_flight)
                            if through_go
                            else local_run(script, contender, tasks, in_flight)
                        )
                        runs[in_flight][contender.label].append(run)
            figures = {n: {label: median_run(r) for label, r in by.items()} for n, by in runs.items()}
            counts = ", ".join(f"{args.tasks or default_tasks(n)} at {n} in flight" for n in loads)
            print(
                table(
                    f"{title}: no-op tasks ({counts}), median of {args.rounds} alternating rounds"
                    + "".join(f", {item}" for item in args.set),
                    figures,
                    starts if through_go else None,
                )
            )
            print()


if __name__ == "__main__":
    main()
