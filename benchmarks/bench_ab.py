"""Two revisions of runqy through the real Go worker's code (go-driver), alternating: throughput, CPU, p50.

    .venv/bin/python benchmarks/bench_ab.py REV_A REV_B [--runner process] [--in-flight 8]
        [--tasks 20000] [--rounds 5] [--go-driver PATH] [--set RUNQY_NAME=VALUE ...]

For a change to the hot path: each revision (anything ``git rev-parse`` takes; ``.``
for the working tree) is exported to a temporary folder and served from there, the
same echo worker and runner settings for both, rounds alternating so that machine
noise hits them alike. Prints, per revision, the median throughput, the CPU the
worker's process tree used per task (children and start-up included, from ``getrusage``), the
median p50 round trip, and every round's throughput. Differences under about 5% are
noise on a shared 2-core machine: use 7 rounds or more before believing one.
Without go-driver it says so and exits 0, as ``bench_go.py`` does.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_go import WORKER, Contender, clean_env, find_driver, go_run

ROOT = Path(__file__).resolve().parent.parent

#: Runs the worker as its child and writes the CPU its process tree used, so that it can be read per run.
RUSAGE_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(repr(usage.ru_utime + usage.ru_stime))
sys.exit(code)
"""


def export(revision: str, folder: Path) -> Path:
    """The ``runqy`` package of ``revision`` (``.``: the working tree), copied under ``folder``."""
    folder.mkdir()
    if revision == ".":
        shutil.copytree(ROOT / "runqy", folder / "runqy", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        git_archive = ["git", "-C", str(ROOT), "archive", revision, "runqy"]
        archive = subprocess.run(git_archive, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def imported_from(beside: Path, env: dict[str, str]) -> Path:
    """Where a script in ``beside``, as the worker is, finds ``runqy`` under ``env`` (it must be the exported copy)."""
    probe = beside / "probe.py"
    probe.write_text("import runqy, pathlib; print(pathlib.Path(runqy.__file__).resolve().parent.parent)")
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, check=True)
    return Path(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("revisions", nargs=2, metavar="REV", help="two git revisions, or . for the working tree")
    parser.add_argument("--runner", default="sequential", help="runner_cls for both (default sequential)")
    parser.add_argument("--in-flight", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per run (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--go-driver", help="path of the go-driver binary (default: $RUNQY_GO_DRIVER or ~/go-driver)")
    parser.add_argument("--set", action="append", default=[], metavar="RUNQY_NAME=VALUE", help="another setting")
    args = parser.parse_args()
    driver = find_driver(args.go_driver, "bench_ab")
    if driver is None:
        return
    settings = {"RUNQY_RUNNER_CLS": args.runner, **dict(item.split("=", 1) for item in args.set)}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        (folder / "echo.py").write_text(WORKER.format(module="runqy"))
        (folder / "launcher.py").write_text(RUSAGE_LAUNCHER)
        cpu_file = folder / "cpu.txt"
        contenders = []
        for number, revision in enumerate(args.revisions):
            copy = export(revision, folder / f"rev{number}")
            env = {**settings, "PYTHONPATH": str(copy)}
            if imported_from(folder, clean_env(env)) != copy.resolve():
                raise SystemExit(f"bench_ab: the worker would not import the copy of {revision} in {copy}")
            contenders.append(Contender(f"{revision} ({args.runner})", "runqy", env))
        worker = f"{sys.executable} {folder / 'launcher.py'} {cpu_file} {sys.executable} {folder / 'echo.py'}"
        runs: dict[str, list[tuple[float, float, float]]] = {c.label: [] for c in contenders}
        for round_number in range(args.rounds):
            for contender in contenders:
                print(f"  {contender.label}, round {round_number + 1}", file=sys.stderr, flush=True)
                run = go_run(driver, worker, contender, args.tasks, args.in_flight)
                cpu_us = float(cpu_file.read_text()) / args.tasks * 1e6
                runs[contender.label].append((run["tasks_per_s"], cpu_us, run["p50_ms"] * 1000))
    print(f"**{args.tasks} no-op tasks, {args.in_flight} in flight, {args.rounds} alternating rounds (go-driver)**\n")
    print("| revision | tasks/s (median) | CPU µs per task | p50 | every round |\n|---|---|---|---|---|")
    medians = []
    for label, figures in runs.items():
        rate = statistics.median(f[0] for f in figures)
        medians.append(rate)
        cpu = statistics.median(f[1] for f in figures)
        p50 = statistics.median(f[2] for f in figures)
        every = " ".join(f"{f[0]:,.0f}" for f in figures)
        print(f"| {label} | {rate:,.0f} | {cpu:.1f} | {p50:.0f} µs | {every} |")
    print(f"\nsecond / first: {medians[1] / medians[0]:.2f}x")


if __name__ == "__main__":
    main()
