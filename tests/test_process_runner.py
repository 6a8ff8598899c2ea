"""PersistentProcessRunner against real child processes running deliberately misbehaving handlers."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import misbehaving
import pytest
from process_helpers import request, run_task, started, submit, wait_for_file, wait_gone

from runqy.errors import LoadFailed, RunnerBroken
from runqy.inline import HostedStdin
from runqy.runners.hybrid import HybridRunner
from runqy.runners.process import PersistentProcessRunner

pytestmark = pytest.mark.timeout(30)

RunnerClass = type[PersistentProcessRunner]
#: Also on the hybrid runner, whose children run tasks on threads: the same promises hold.
ON_BOTH = pytest.mark.parametrize(
    ("runner_class", "options"),
    [(PersistentProcessRunner, {}), (HybridRunner, {"threads_per_process": 2})],
    ids=["process", "hybrid"],
)


def test_each_child_loads_once_and_runs_tasks_in_parallel(tmp_path: Path) -> None:
    with started(num_processes=2) as runner:
        pids = set(runner.child_pids)
        assert len(pids) == 2 and os.getpid() not in pids
        # Two tasks that only finish once both are running: they must run at the same time.
        answers = [submit(runner, request("barrier", dir=str(tmp_path), parties=2)) for _ in range(2)]
        assert {a.wait().result["pid"] for a in answers} == pids
        loaded_in = {run_task(runner, request("loaded_in")).result for _ in range(4)}
        assert loaded_in <= pids


def test_a_crash_fails_only_its_task_and_the_child_is_replaced() -> None:
    with started() as runner:
        first = run_task(runner, request("pid")).result
        crashed = run_task(runner, request("exit", code=7))
        assert crashed.error is not None and "exited with code 7" in crashed.error
        assert crashed.retry is True
        after = run_task(runner, request("pid"))
        assert after.error is None and after.result != first


def test_death_by_signal_names_the_signal_and_faulthandler_shows_where(capfd: pytest.CaptureFixture[str]) -> None:
    with started() as runner:
        response = run_task(runner, request("segfault"))
        assert response.error is not None and "SIGSEGV" in response.error
        assert run_task(runner, request("echo", value=1)).result["echo"] == 1
    assert "Segmentation fault" in capfd.readouterr().err


def test_a_crashed_attempt_is_retried_locally() -> None:
    with started(max_retries=1) as runner:
        response = run_task(runner, request("exit_first_attempt"))
        assert response.error is None and response.result == {"attempt": 2}


@ON_BOTH
def test_a_task_that_brings_down_two_children_is_poison(runner_class: RunnerClass, options: dict[str, int]) -> None:
    with started(runner_class, max_retries=3, **options) as runner:
        response = run_task(runner, request("exit", task_id="poison"))
        assert response.error is not None and "brought down 2 worker processes" in response.error
        assert response.retry is False
        # Redelivered by the Go worker: refused without bringing down a third child. A task run
        # first makes sure the replacement child is up, so that its pid is the one compared.
        child = run_task(runner, request("pid")).result
        again = run_task(runner, request("exit", task_id="poison"))
        assert again.retry is False and "not run again" in (again.error or "")
        assert runner.child_pids == [child]


def test_timeout_kills_the_child_with_its_grandchild(tmp_path: Path) -> None:
    mark = tmp_path / "grandchild"
    with started(task_timeout_s=0.5) as runner:
        [child] = runner.child_pids
        answer = submit(runner, request("hang_with_grandchild", mark=str(mark)))
        grandchild = int(wait_for_file(mark))
        response = answer.wait()
        assert response.error is not None and "timed out" in response.error and response.retry is True
        assert wait_gone(grandchild) and wait_gone(child)
        assert run_task(runner, request("pid")).result not in (child, grandchild)


def test_a_timed_out_attempt_is_retried_in_a_fresh_child() -> None:
    with started(task_timeout_s=0.5, max_retries=1) as runner:
        [child] = runner.child_pids
        response = run_task(runner, request("hang_first_attempt"))
        assert response.error is None
        assert response.result["attempt"] == 2 and response.result["pid"] != child


def test_retryable_errors_are_retried_up_to_max_retries() -> None:
    with started(max_retries=2) as runner:
        assert run_task(runner, request("retryable", succeed_on=3)).result == {"attempt": 3}
        exhausted = run_task(runner, request("retryable", succeed_on=4))
        assert exhausted.retry is True and "attempt 3 asked to be retried" in (exhausted.error or "")


def test_results_that_cannot_leave_the_child_become_errors() -> None:
    with started() as runner:
        response = run_task(runner, request("unpicklable"))
        assert response.error is not None and "cannot be sent from the child process" in response.error
        assert run_task(runner, request("echo", value=2)).result["echo"] == 2


def test_max_tasks_per_child_recycles_and_logs_each_recycle_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runqy")
    with started(max_tasks_per_child=2) as runner:
        pids = [run_task(runner, request("pid")).result for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    recycles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recycling child process")]
    assert len(recycles) == 2 and all("max_tasks_per_child=2" in line for line in recycles)


@ON_BOTH
def test_a_memory_balloon_is_stopped_before_the_machine_runs_out(
    runner_class: RunnerClass, options: dict[str, int]
) -> None:
    with started(runner_class, max_memory_per_child_mb=200, **options) as runner:
        response = run_task(runner, request("balloon"))
        assert response.error is not None and "max_memory_per_child_mb=200" in response.error
        assert run_task(runner, request("echo", value=3)).result["echo"] == 3


@ON_BOTH
def test_a_child_that_keeps_memory_is_recycled_between_tasks(
    caplog: pytest.LogCaptureFixture, runner_class: RunnerClass, options: dict[str, int]
) -> None:
    caplog.set_level(logging.INFO, logger="runqy")
    with started(runner_class, max_memory_per_child_mb=100, **options) as runner:
        leaked_in = run_task(runner, request("leak", mb=128))
        assert leaked_in.error is None  # the task that leaked still succeeds
        assert wait_gone(leaked_in.result)
        assert run_task(runner, request("pid")).result != leaked_in.result
    assert any("after a task (max_memory_per_child_mb=100)" in r.getMessage() for r in caplog.records)


def test_load_failure_in_a_child_fails_start_with_the_childs_error() -> None:
    runner = PersistentProcessRunner(num_processes=2)
    with pytest.raises(LoadFailed, match="the model file is missing"):
        runner.start(misbehaving.broken_registry)


def test_a_crash_loop_reports_a_fatal_error_instead_of_spinning() -> None:
    fatal: list[BaseException] = []
    reported = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        reported.set()

    with started(crash_limit=3, crash_window_s=60) as runner:
        runner.on_fatal = on_fatal
        for _ in range(2):
            run_task(runner, request("exit"))
        last_crash = submit(runner, request("exit"))
        waiting = submit(runner, request("echo"))  # queued behind the crash: never runs
        assert "exited with code 1" in (last_crash.wait().error or "")
        assert reported.wait(10) and isinstance(fatal[0], RunnerBroken)
        assert waiting.wait().retry is True and "died within" in (waiting.responses[0].error or "")
        refused = run_task(runner, request("echo"))
        assert refused.retry is True and "died within" in (refused.error or "")


def test_crashes_between_answered_tasks_are_not_a_crash_loop() -> None:
    fatal: list[BaseException] = []
    with started(crash_limit=3, crash_window_s=60) as runner:
        runner.on_fatal = fatal.append
        for _ in range(5):
            assert "exited with code 1" in (run_task(runner, request("exit")).error or "")
            assert run_task(runner, request("echo")).error is None
    assert fatal == []


def test_close_stops_every_child() -> None:
    with started(num_processes=2) as runner:
        pids = runner.child_pids
    assert all(wait_gone(pid) for pid in pids)


def test_close_does_not_wait_for_a_replacement_that_is_still_starting() -> None:
    with started() as runner:
        run_task(runner, request("exit"))  # its replacement starts now
        began = time.monotonic()
        runner.close(timeout_s=0)
        assert time.monotonic() - began < 2.0  # the supervisor waits up to 2.5 s for children that were missed
        assert runner.child_pids == []


def test_a_child_imports_nothing_heavy_it_does_not_use() -> None:
    # What a child imports is paid again by every replacement child before it serves.
    code = "from runqy import load, run, task; import runqy.runners._child, sys\n"
    code += "print(sorted({'pydantic', 'pydantic_settings', 'pydantic_core', 'asyncio'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_failure_in_the_loop_that_reads_stdin_breaks_the_runner_instead_of_hanging_it() -> None:
    """The supervisor thread reads stdin and answers every task: if it fails, the worker must exit and restart."""
    reported: list[BaseException] = []
    failed = threading.Event()

    def has_room() -> bool:
        raise RuntimeError("stdin cannot be polled")

    with started() as runner:
        runner.on_fatal = lambda exc: (reported.append(exc), failed.set())
        stdin_r, stdin_w = os.pipe()
        try:
            host = runner.stdin_host()
            assert host is not None
            host.host(HostedStdin(lambda _fd: [], stdin_r, has_room, contextlib.nullcontext))
            assert failed.wait(10)
        finally:
            os.close(stdin_r)
            os.close(stdin_w)
    assert isinstance(reported[0], RunnerBroken) and "stdin cannot be polled" in str(reported[0])
