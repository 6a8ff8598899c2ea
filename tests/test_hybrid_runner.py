"""HybridRunner: threads inside persistent children, against real processes (every answer counted)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from process_helpers import DEADLINE_S, gone, request, run_task, started, submit, wait_for_file, wait_gone

from runqy.errors import RunnerBroken
from runqy.runners.hybrid import HybridRunner

pytestmark = pytest.mark.timeout(30)


def test_tasks_run_on_threads_of_every_child(tmp_path: Path) -> None:
    with started(HybridRunner, num_processes=2, threads_per_process=2) as runner:
        assert runner.capacity == 4
        children = set(runner.child_pids)
        # Four tasks that only finish once all four are running at the same time.
        answers = [submit(runner, request("barrier", dir=str(tmp_path), parties=4)) for _ in range(4)]
        results = [answer.wait().result for answer in answers]
    assert {r["pid"] for r in results} == children and len(children) == 2
    assert len({(r["pid"], r["thread"]) for r in results}) == 4


def test_a_thread_timeout_is_retried_without_killing_the_child() -> None:
    with started(HybridRunner, task_timeout_s=0.3, max_retries=1, threads_per_process=2) as runner:
        [child] = runner.child_pids
        response = run_task(runner, request("hang_first_attempt"))
        assert response.error is None and response.result == {"attempt": 2, "pid": child}


def test_too_many_abandoned_threads_recycle_the_child(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runqy")
    with started(HybridRunner, task_timeout_s=0.3, max_abandoned_threads=0, threads_per_process=2) as runner:
        [child] = runner.child_pids
        response = run_task(runner, request("hang"))
        assert response.error is not None and "timed out" in response.error
        assert wait_gone(child)
        assert run_task(runner, request("pid")).result != child
    assert any("timed-out threads still running" in r.getMessage() for r in caplog.records)


def test_a_crash_fails_only_the_tasks_of_that_child(tmp_path: Path) -> None:
    with started(HybridRunner, num_processes=2, threads_per_process=2) as runner:
        marks = [tmp_path / "a", tmp_path / "b"]
        hanging = [submit(runner, request("hang", mark=str(mark))) for mark in marks]
        hang_pids = {int(wait_for_file(mark)) for mark in marks}
        assert hang_pids == set(runner.child_pids)  # least-loaded dispatch: one per child
        crash = run_task(runner, request("exit", code=5))
        assert crash.error is not None and "exited with code 5" in crash.error
        failed = [answer for answer in hanging if answer.done.is_set()]
        assert len(failed) == 1 and "exited with code 5" in (failed[0].responses[0].error or "")
        survivor = next(answer for answer in hanging if not answer.done.is_set())
        assert survivor.responses == []


def test_a_child_stuck_holding_the_gil_is_killed_by_the_backstop() -> None:
    # No thread of the child can run to time the attempt out: the parent kills the child.
    with started(HybridRunner, task_timeout_s=0.3, threads_per_process=2) as runner:
        [child] = runner.child_pids
        response = run_task(runner, request("gil_hog"))
        assert response.error is not None and "timed out" in response.error
        assert wait_gone(child)
        assert run_task(runner, request("pid")).result != child


def test_a_crash_loop_reports_a_fatal_error_and_answers_what_was_queued() -> None:
    fatal: list[BaseException] = []
    reported = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        reported.set()

    with started(HybridRunner, crash_limit=3, crash_window_s=60, threads_per_process=1) as runner:
        runner.on_fatal = on_fatal
        for _ in range(2):
            assert "exited with code 1" in (run_task(runner, request("exit")).error or "")
        last_crash = submit(runner, request("exit"))
        waiting = submit(runner, request("echo"))  # queued behind the crash: never runs
        assert "exited with code 1" in (last_crash.wait().error or "")
        assert reported.wait(DEADLINE_S) and isinstance(fatal[0], RunnerBroken)
        assert waiting.wait().retry is True and "died within" in (waiting.responses[0].error or "")
        refused = run_task(runner, request("echo"))
        assert refused.retry is True and "died within" in (refused.error or "")


def test_max_tasks_per_child_recycles_the_child(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runqy")
    with started(HybridRunner, max_tasks_per_child=2, threads_per_process=2) as runner:
        pids = [run_task(runner, request("pid")).result for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert any("max_tasks_per_child=2" in r.getMessage() for r in caplog.records)


def test_a_retiring_child_finishes_its_running_tasks_and_takes_no_new_ones(tmp_path: Path) -> None:
    release, started_mark = tmp_path / "release", tmp_path / "started"
    with started(HybridRunner, max_tasks_per_child=1, threads_per_process=2) as runner:
        [child] = runner.child_pids
        running = submit(runner, request("wait_for_file", file=str(release), mark=str(started_mark)))
        assert int(wait_for_file(started_mark)) == child
        # The child's first answered task reaches max_tasks_per_child while `running` still runs in it.
        assert run_task(runner, request("pid")).result == child
        assert run_task(runner, request("pid")).result != child, "a retiring child took a new task"
        assert not running.done.is_set() and not gone(child)
        release.touch()
        assert running.wait().result == child  # finished where it ran, not killed with its child
        assert wait_gone(child)
