"""HybridRunner: threads inside persistent children, against real processes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from process_helpers import request, started, submit, wait_for_file, wait_gone

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
        response = runner.run_task(request("hang_first_attempt"))
        assert response.error is None and response.result == {"attempt": 2, "pid": child}


def test_too_many_abandoned_threads_recycle_the_child(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runqy")
    with started(HybridRunner, task_timeout_s=0.3, max_abandoned_threads=0, threads_per_process=2) as runner:
        [child] = runner.child_pids
        response = runner.run_task(request("hang"))
        assert response.error is not None and "timed out" in response.error
        assert wait_gone(child)
        assert runner.run_task(request("pid")).result != child
    assert any("timed-out threads still running" in r.getMessage() for r in caplog.records)


def test_a_crash_fails_only_the_tasks_of_that_child(tmp_path: Path) -> None:
    with started(HybridRunner, num_processes=2, threads_per_process=2) as runner:
        marks = [tmp_path / "a", tmp_path / "b"]
        hanging = [submit(runner, request("hang", mark=str(mark))) for mark in marks]
        hang_pids = {int(wait_for_file(mark)) for mark in marks}
        assert hang_pids == set(runner.child_pids)  # least-loaded dispatch: one per child
        crash = runner.run_task(request("exit", code=5))
        assert crash.error is not None and "exited with code 5" in crash.error
        failed = [answer for answer in hanging if answer.done.is_set()]
        assert len(failed) == 1 and "exited with code 5" in (failed[0].responses[0].error or "")
        survivor = next(answer for answer in hanging if not answer.done.is_set())
        assert survivor.responses == []


def test_a_child_stuck_holding_the_gil_is_killed_by_the_backstop() -> None:
    # No thread of the child can run to time the attempt out: the parent kills the child.
    with started(HybridRunner, task_timeout_s=0.3, threads_per_process=2) as runner:
        [child] = runner.child_pids
        response = runner.run_task(request("gil_hog"))
        assert response.error is not None and "timed out" in response.error
        assert wait_gone(child)
        assert runner.run_task(request("pid")).result != child
