"""Where a task's cost goes through the real Go worker's code (go-driver): CPU and system calls per task, by process.

    .venv/bin/python benchmarks/bench_tree.py [--go-driver PATH] [--in-flight 8] [--tasks 100000]
        [--rounds 3] [--only sequential,process(2)]

Throughput on a 2-core machine is a share of two cores among go-driver, the worker and
its children, so a change to the hot path is best judged by what each of them spends
per task. Each contender of ``bench_go.py`` (the same echo worker) runs twice per round,
with ``--tasks`` and with a fifth of them; the difference between the two, divided by
the tasks between them, is the steady state: start-up, imports and shutdown cancel out.
Every process of the tree is sampled (psutil) until it exits, and the round with the
median worker CPU stands. Printed per process: CPU µs per task, and ``read`` and
``write`` system calls per task (``/proc/PID/task/*/io``, so Linux only). Without
go-driver it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from bench_go import CONTENDERS, WORKER, Contender, clean_env, find_driver, go_command
from suite import BARE, install_baseline

#: How often the tree is sampled: a process's last interval before it exits is not seen,
#: the same in both runs of a pair, so the difference loses nothing.
_SAMPLE_S = 0.005

#: What a process spent: CPU seconds, read and write system calls (or each of them per task).
Spent = tuple[float, float, float]


def role(pid: int, parent: int, cmdline: str, root: int) -> str:
    """A name for a process of the tree that is the same in every run (children are numbered in run_tree())."""
    if pid == root:
        return "go-driver"
    if parent == root:
        return "worker"
    return "resource tracker" if "resource_tracker" in cmdline else "child"


def system_calls_by_thread(pid: int) -> dict[int, tuple[int, int]]:
    """The read and write system calls of each thread of a process, by thread id (Linux).

    By thread: ``/proc/PID/io`` adds the counts of the children the process reaped, so a
    parent's would jump by its children's at shutdown. A thread's counts are lost when it
    ends, so the caller keeps the last ones it saw.
    """
    counts = {}
    for thread in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            fields = dict(line.split(": ") for line in (thread / "io").read_text().splitlines())
            counts[int(thread.name)] = (int(fields["syscr"]), int(fields["syscw"]))
    return counts


def run_tree(driver: Path, script: Path, contender: Contender, tasks: int, in_flight: int) -> dict[str, Spent]:
    """One go-driver run; what each process of its tree spent, by role."""
    command = go_command(driver, f"{sys.executable} {script}", tasks, in_flight)
    driving = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean_env(contender.env))
    root = psutil.Process(driving.pid)
    # By pid: the parent, the command line and the CPU seconds, as last seen (the command line is
    # read every time: a child just forked still shows its parent's); system calls by thread.
    seen: dict[int, tuple[int, str, float]] = {}
    calls: dict[int, dict[int, tuple[int, int]]] = {}
    while driving.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in tree:
            try:
                with process.oneshot():
                    cpu, parent, cmdline = process.cpu_times(), process.ppid(), " ".join(process.cmdline())
                calls.setdefault(process.pid, {}).update(system_calls_by_thread(process.pid))
            except (psutil.Error, OSError):
                continue  # gone between the listing and the reading: its last sample stands
            seen[process.pid] = (parent, cmdline, cpu.user + cpu.system)
        with contextlib.suppress(subprocess.TimeoutExpired):
            driving.wait(_SAMPLE_S)
    result = json.loads((driving.stdout.read() if driving.stdout else "").strip().splitlines()[-1])
    if result["ok"] != tasks:
        raise SystemExit(f"{contender.label}: {result['ok']} of {tasks} tasks answered correctly: {result}")
    spent: dict[str, Spent] = {}
    children = 0
    for pid, (parent, cmdline, cpu_s) in sorted(seen.items()):
        name = role(pid, parent, cmdline, root.pid)
        if name == "child":
            children += 1
            name = f"child {children}"
        threads = calls[pid].values()
        spent[name] = (cpu_s, sum(reads for reads, _ in threads), sum(writes for _, writes in threads))
    return spent


def per_task(long: dict[str, Spent], short: dict[str, Spent], tasks: int) -> dict[str, Spent]:
    """What each process spent per task between the short run and the long one."""
    steady: dict[str, Spent] = {}
    for name, (cpu_s, reads, writes) in long.items():
        short_cpu_s, short_reads, short_writes = short.get(name, (0.0, 0.0, 0.0))
        steady[name] = (
            (cpu_s - short_cpu_s) * 1e6 / tasks,
            (reads - short_reads) / tasks,
            (writes - short_writes) / tasks,
        )
    return steady


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--go-driver", help="path of the go-driver binary (default: $RUNQY_GO_DRIVER or ~/go-driver)")
    parser.add_argument("--in-flight", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--tasks", type=int, default=100000, help="tasks of the long run; the short one runs a fifth")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median worker CPU stands")
    parser.add_argument("--only", help="comma-separated labels of the contenders (default: all but the bare loop)")
    args = parser.parse_args()
    driver = find_driver(args.go_driver, "bench_tree")
    if driver is None:
        return
    install_baseline()
    wanted = set(args.only.split(",")) if args.only else {c.label for c in CONTENDERS} - {BARE}
    contenders = [c for c in CONTENDERS if c.label in wanted]
    short_tasks = args.tasks // 5
    rounds: dict[str, list[dict[str, Spent]]] = {c.label: [] for c in contenders}
    with tempfile.TemporaryDirectory() as folder:
        scripts = {"baseline": Path(folder) / "baseline.py", "runqy": Path(folder) / "runqy_echo.py"}
        scripts["baseline"].write_text(WORKER.format(module="runqy_python"))
        scripts["runqy"].write_text(WORKER.format(module="runqy"))
        for round_number in range(args.rounds):
            for contender in contenders:
                print(f"  {contender.label}, round {round_number + 1}", file=sys.stderr, flush=True)
                script = scripts[contender.script]
                short = run_tree(driver, script, contender, short_tasks, args.in_flight)
                long = run_tree(driver, script, contender, args.tasks, args.in_flight)
                rounds[contender.label].append(per_task(long, short, args.tasks - short_tasks))
    print(
        f"**Steady state per task, {args.in_flight} in flight ({args.tasks} tasks less {short_tasks}), "
        f"median of {args.rounds} alternating rounds by the worker's CPU (go-driver)**"
    )
    print()
    print("| contender | process | CPU µs per task | reads per task | writes per task |")
    print("|---|---|---|---|---|")
    for label, runs in rounds.items():
        median = sorted(runs, key=lambda run: run["worker"][0])[len(runs) // 2]
        total = sum(figures[0] for figures in median.values())
        for name, (cpu_us, reads, writes) in median.items():
            print(f"| {label} | {name} | {cpu_us:.1f} | {reads:.2f} | {writes:.2f} |")
        print(f"| {label} | whole tree | {total:.1f} | | |")


if __name__ == "__main__":
    main()
