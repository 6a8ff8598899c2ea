"""``runqy bench`` on real workers: the table, the recommendation, and the timeline picture."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from runner_params import CLEAN_ENV, runner_params

from runqy.local.bench import BenchResult, compare, measure, recommend
from runqy.local.procstats import TreeUsage
from runqy.local.stats import RunSummary
from runqy.local.timeline import assign_slots, write_svg

WORKER = Path(__file__).parent / "workers" / "bench_worker.py"
ASYNC_WORKER = Path(__file__).parent / "workers" / "async_bench_worker.py"
BATCH_WORKER = Path(__file__).parent / "workers" / "batch_bench_worker.py"


def bench(*args: str, cwd: Path, worker: Path = WORKER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runqy", "bench", str(worker), *args],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        cwd=cwd,
        timeout=240,
    )


def spin_iterations(target_s: float) -> int:
    started, n = time.perf_counter(), 200_000
    x = 0
    for i in range(n):
        x += i * i
    return int(n * target_s / (time.perf_counter() - started))


@pytest.mark.timeout(120)
def test_the_table_has_a_row_per_runner_and_the_timeline_is_an_svg(tmp_path: Path) -> None:
    done = bench(
        "--runners", "sequential", "--payload", '{"kind": "sleep", "s": 0.002}', "--generate", "40",
        "--timeline", "t.svg", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, _rule, row, recommendation = done.stdout.splitlines()
    assert header.split()[:3] == ["runner", "tasks/s", "p50"]
    assert row.split()[0] == "sequential" and row.split()[4] == "1.00x"
    assert recommendation.startswith("recommendation: keep the sequential runner")
    svg = ET.parse(tmp_path / "t.svg").getroot()
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("height") == "10"]
    assert len(bars) == 40


@pytest.mark.timeout(60)
def test_a_sequential_worker_runs_one_task_at_a_time_on_the_timeline(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "runqy", "run", str(WORKER), "--runner", "sequential", "--log-level", "INFO"]
    result = measure("sequential", argv, [{"kind": "sleep", "s": 0.005}], tasks=20, concurrency=4, env=CLEAN_ENV)
    assert result.capacity == 1
    assert result.summary.count("ok") == 20
    bars = sorted(assign_slots(result.outcomes, result.capacity), key=lambda bar: bar.start_s)
    assert {bar.slot for bar in bars} == {0}
    assert all(later.start_s >= earlier.end_s for earlier, later in itertools.pairwise(bars))
    compare([result])
    assert result.speedup == 1.0
    write_svg(tmp_path / "one.svg", [("sequential", bars)])
    ET.parse(tmp_path / "one.svg")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("runner", runner_params("thread"))
def test_on_a_sleeping_handler_the_thread_runner_comes_out_ahead(tmp_path: Path, runner: str) -> None:
    payload = json.dumps({"kind": "sleep", "s": 0.01})
    done = bench("--runners", f"sequential,{runner}", "--payload", payload, "--generate", "64", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r'recommendation: runner_cls = "thread" \([\d.]+x the sequential runner\)', done.stdout)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("runner", runner_params("process"))
def test_a_spin_handler_is_benched_on_every_runner_asked_for(tmp_path: Path, runner: str) -> None:
    # Which runner wins, and by how much CPU, is decided by recommend() (tested on fixed figures below)
    # from figures that other work on the machine moves: those live in docs/benchmarks.md, not here.
    payload = json.dumps({"kind": "spin", "n": spin_iterations(0.02)})
    done = bench(
        "--runners", f"sequential,thread,{runner}", "--payload", payload, "--generate", "40", "--concurrency", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:5]}
    assert set(rows) == {"sequential", "thread", runner}, done.stdout
    assert all(row[-2:] == ["0", "0"] for row in rows.values()), done.stdout  # nothing failed, nothing lost
    assert re.search(r"^recommendation: ", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.timeout(240)
@pytest.mark.parametrize("runner", runner_params("async"))
def test_an_async_handler_that_waits_gets_the_async_runner_and_a_plain_one_skips_it(
    tmp_path: Path, runner: str
) -> None:
    payload = json.dumps({"s": 0.05})
    runners = f"sequential,thread,{runner}"
    # The thread runner at a fixed size, as a deployment sizes it, while the async runner keeps
    # all 50 in flight on its loop: 5x the threads' ceiling, a gap no load on the machine closes.
    # (Sized to the window, the two tie and the faster one on the day would be recommended.)
    args = ("--runners", runners, "--payload", payload, "--generate", "200", "--concurrency", "50")
    args += ("--max-threads", "10")
    done = bench(*args, cwd=tmp_path, worker=ASYNC_WORKER)
    assert done.returncode == 0, done.stderr
    assert re.search(r'^recommendation: runner_cls = "async" \(', done.stdout, re.MULTILINE), done.stdout
    plain = bench("--runners", f"sequential,{runner}", "--payload", '{"kind": "sleep", "s": 0.001}', cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "async: skipped, it runs only async def handlers" in plain.stderr
    assert [line.split()[0] for line in plain.stdout.splitlines()[2:-1]] == ["sequential"]


@pytest.mark.timeout(120)
def test_a_batch_handler_shows_how_full_its_calls_were(tmp_path: Path) -> None:
    # 16 in flight and one call at a time: while a call sleeps, the next tasks queue up and
    # the following call takes up to 8 of them, so calls carry more than one task on average.
    args = ("--runners", "sequential", "--payload", '{"s": 0.01}', "--generate", "160", "--concurrency", "16")
    done = bench(*args, cwd=tmp_path, worker=BATCH_WORKER)
    assert done.returncode == 0, done.stderr
    header, _rule, row, _recommendation = done.stdout.splitlines()
    assert header.split()[-3:] == ["batch", "failed", "lost"]
    mean = float(row.split()[-3])
    assert 1.5 < mean <= 8, done.stdout
    plain = bench("--runners", "sequential", "--payload", '{"kind": "sleep", "s": 0.001}', cwd=tmp_path)
    assert "batch" not in plain.stdout.splitlines()[0], "no batch column for a handler that does not batch"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("runner", runner_params("process"))
def test_on_a_pure_python_spin_handler_the_process_runner_spins_in_two_children_at_once(runner: str) -> None:
    # On a busy machine the children get less CPU, but they still run at the same time: each
    # task reports its process and when it started and ended, on the machine-wide monotonic clock.
    payload = {"kind": "spin", "n": spin_iterations(0.02)}
    argv = [sys.executable, "-m", "runqy", "run", str(WORKER), "--runner", runner]
    env = {**CLEAN_ENV, "RUNQY_RUNNER__NUM_PROCESSES": "2"}
    result = measure(runner, argv, [payload], tasks=40, concurrency=2, env=env)
    assert result.summary.count("ok") == 40
    spins = [outcome.response["result"] for outcome in result.outcomes if outcome.response]
    assert len({spin["pid"] for spin in spins}) == 2
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(spins, 2)
        if a["pid"] != b["pid"] and a["started"] < b["ended"] and b["started"] < a["ended"]
    ]
    assert overlapping, "no two children ever ran a task at the same time"


def figures(name: str, tasks_per_s: float, lost: int = 0) -> BenchResult:
    summary = RunSummary(Counter(ok=int(tasks_per_s), lost=lost), elapsed_s=1.0)
    return BenchResult(name, summary, TreeUsage(1, 0.5, 2**20), None, 16)


def test_the_recommendation_prefers_the_lighter_runner_unless_a_heavier_one_is_clearly_faster() -> None:
    close = [figures("sequential", 100), figures("thread", 105), figures("process", 108)]
    compare(close)
    assert recommend(close).startswith("recommendation: keep the sequential runner")
    clear = [figures("sequential", 100), figures("thread", 400), figures("process", 420)]
    compare(clear)
    assert recommend(clear).startswith('recommendation: runner_cls = "thread" (4.0x the sequential runner)')


def test_a_runner_that_lost_tasks_is_never_recommended() -> None:
    results = [figures("sequential", 100), figures("process", 900, lost=3)]
    compare(results)
    assert "sequential" in recommend(results)
