"""Worker start-up: spawn to ready line, and a one-shot task end to end, runqy against runqy-python 0.2.2.

Each contender is a no-op echo worker started in an empty folder with no ``RUNQY_*``
variable (the case of most workers switching from 0.2.2), then one with a
``[tool.runqy]`` table. Runs alternate between contenders; medians are printed.
The one-shot case is what the Go worker does in ``one_shot`` mode: spawn, wait for
the ready line, send one request, close stdin, read the answer, wait for the exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from suite import BASELINE_DIR, install_baseline

WORKER = """\
from {module} import task, {entry}

@task
def handle(payload):
    return payload

{entry}({args})
"""

REQUEST = b'{"task_id": "t1", "payload": {"i": 1}}\n'


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    # A deployed Go worker sets neither; PYTHONDONTWRITEBYTECODE would also leave runqy without .pyc files.
    drop = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.upper().startswith("RUNQY_")}
    return {**env, **extra}


def to_ready(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Milliseconds from spawn to the ready line."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd)
    assert child.stdout is not None and child.stdin is not None
    line = child.stdout.readline()
    elapsed = (time.perf_counter() - started) * 1000
    assert b"ready" in line, line
    child.stdin.close()
    child.wait()
    return elapsed


def one_shot(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Milliseconds from spawn to exit, for one task sent after the ready line, stdin then closed."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd)
    assert child.stdout is not None and child.stdin is not None
    assert b"ready" in child.stdout.readline()
    child.stdin.write(REQUEST)
    child.stdin.close()
    assert b"t1" in child.stdout.readline()
    assert child.wait() == 0
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs of each case (alternating); medians are shown")
    args = parser.parse_args()
    install_baseline()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        quiet, table = root / "no-config", root / "tool-runqy"
        for folder in (quiet, table):
            folder.mkdir()
            for module, tag in (("runqy_python", "022"), ("runqy", "runqy")):
                (folder / f"run_{tag}.py").write_text(WORKER.format(module=module, entry="run", args=""))
                (folder / f"once_{tag}.py").write_text(WORKER.format(module=module, entry="run_once", args=""))
            (folder / "workers_runqy.py").write_text(WORKER.format(module="runqy", entry="run", args="workers=4"))
        (table / "pyproject.toml").write_text('[project]\nname = "w"\n\n[tool.runqy]\nshutdown_timeout_s = 5\n')
        base, mine = clean_env({"PYTHONPATH": str(BASELINE_DIR)}), clean_env({})
        py = sys.executable
        cases: dict[str, tuple[Callable[[list[str], dict[str, str], Path], float], list[str], dict[str, str], Path]] = {
            "0.2.2 run()": (to_ready, [py, "run_022.py"], base, quiet),
            "runqy run()": (to_ready, [py, "run_runqy.py"], mine, quiet),
            "runqy run(workers=4)": (to_ready, [py, "workers_runqy.py"], mine, quiet),
            "runqy run() + [tool.runqy]": (to_ready, [py, "run_runqy.py"], mine, table),
            "runqy run (CLI)": (to_ready, [py, "-m", "runqy", "run", "run_runqy.py"], mine, quiet),
            "0.2.2 run_once(), one task": (one_shot, [py, "once_022.py"], base, quiet),
            "runqy run_once(), one task": (one_shot, [py, "once_runqy.py"], mine, quiet),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (measure, command, env, cwd) in cases.items():
                times[name].append(measure(command, env, cwd))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"worker start-up, median of {args.runs} alternating runs, no-op echo worker")
    for name, value in median.items():
        what = "spawn to exit" if "one task" in name else "spawn to ready"
        print(f"  {name:30s} {what:15s} {value:7.1f} ms")
    print(f"  runqy / 0.2.2, spawn to ready (no configuration): {median['runqy run()'] / median['0.2.2 run()']:.2f}x")
    once = median["runqy run_once(), one task"] / median["0.2.2 run_once(), one task"]
    print(f"  runqy / 0.2.2, one-shot task end to end:          {once:.2f}x")


if __name__ == "__main__":
    main()
