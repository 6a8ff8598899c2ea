"""RunqyBuilder: typed choices that win over every other source and leave the rest to them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from config_env import isolate, write_config, write_pyproject

from runqy import RetryableError, RunqyBuilder, Worker, current_task
from runqy.app import Registry
from runqy.errors import ConfigError, ConfigWarning
from runqy.protocol import TaskRequest
from runqy.runners.sequential import SequentialRunner


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_each_runner_method_sets_the_runner_and_its_options() -> None:
    assert RunqyBuilder().sequential_runner().overrides() == {"runner_cls": "sequential"}
    assert RunqyBuilder().thread_runner(max_threads=8).overrides() == {
        "runner_cls": "thread",
        "runner": {"max_threads": 8},
    }
    assert RunqyBuilder().persistent_process_runner(num_processes=2, start_method="forkserver").overrides() == {
        "runner_cls": "process",
        "runner": {"num_processes": 2, "start_method": "forkserver"},
    }
    assert asdict(RunqyBuilder().hybrid_runner(num_processes=2, threads_per_process=4).settings().runner) == {
        "max_threads": None,
        "num_processes": 2,
        "threads_per_process": 4,
        "start_method": "spawn",
        "max_concurrency": 1000,
    }
    assert RunqyBuilder().async_runner(max_concurrency=200).overrides() == {
        "runner_cls": "async",
        "runner": {"max_concurrency": 200},
    }


def test_choosing_another_runner_drops_the_options_of_the_first() -> None:
    builder = RunqyBuilder().thread_runner(max_threads=8).persistent_process_runner(num_processes=2)
    assert builder.overrides() == {"runner_cls": "process", "runner": {"num_processes": 2}}


def test_precedence_builder_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_RUNNER_CLS", "hybrid")
    monkeypatch.setenv("RUNQY_MAX_RETRIES", "5")
    report = RunqyBuilder().sequential_runner().retries(1, backoff_s=0.25).describe()
    assert (report["settings"]["runner_cls"], report["settings"]["max_retries"]) == ("sequential", 1)
    assert report["sources"]["runner_cls"] == report["sources"]["retry_backoff_s"] == "code"


def test_builder_leaves_unset_values_to_the_other_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = write_pyproject(
        tmp_path, "[tool.runqy]\nshutdown_timeout_s = 3\n[tool.runqy.runner]\nmax_threads = 6\n"
    )
    monkeypatch.setenv("RUNQY_CONFIG", str(write_config(tmp_path, "max_retries = 2\n")))
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "4")
    report = RunqyBuilder().thread_runner().describe()
    settings, sources = report["settings"], report["sources"]
    assert (settings["runner_cls"], settings["runner"]["max_threads"]) == ("thread", 6)
    assert (settings["task_timeout_s"], settings["max_retries"], settings["shutdown_timeout_s"]) == (4, 2, 3)
    assert sources["runner.max_threads"] == sources["shutdown_timeout_s"] == f"pyproject:{pyproject}"
    assert sources["task_timeout_s"] == "env:RUNQY_TASK_TIMEOUT_S"


def test_task_timeout_none_lifts_a_limit_set_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "4")
    assert RunqyBuilder().task_timeout(None).settings().task_timeout_s is None


def test_recycling_options_reach_the_settings() -> None:
    settings = RunqyBuilder().persistent_process_runner().recycle_children(max_tasks=100, max_memory_mb=2048).settings()
    assert (settings.max_tasks_per_child, settings.max_memory_per_child_mb) == (100, 2048)


def test_bad_values_fail_when_building_not_at_the_first_task() -> None:
    builder = RunqyBuilder().hybrid_runner(num_processes=0)
    with pytest.raises(ConfigError, match=r"runner.num_processes = 0 in code"):
        builder.build()


def test_hard_timeout_on_the_thread_runner_fails_at_build() -> None:
    with pytest.raises(ConfigError, match=r"require_hard_timeout.*'thread' runner cannot stop a timed-out task"):
        RunqyBuilder().thread_runner(max_threads=4).task_timeout(10, hard=True).settings()


def test_useless_option_warns_at_build() -> None:
    with pytest.warns(ConfigWarning, match=r"max_tasks_per_child is ignored by the sequential runner"):
        RunqyBuilder().sequential_runner().recycle_children(max_tasks=10).settings()


def test_custom_runner_class_is_given_as_a_class() -> None:
    settings = RunqyBuilder().custom_runner(SequentialRunner).settings()
    assert settings.runner_cls == "runqy.runners.sequential:SequentialRunner"
    assert settings.runner_class() is SequentialRunner


def test_built_worker_runs_tasks_with_the_builder_settings() -> None:
    registry = Registry()
    seen: list[int] = []

    @registry.task
    def flaky(payload: Any) -> Any:
        seen.append(current_task().attempt)
        if len(seen) < 3:
            raise RetryableError("not yet")
        return payload

    with RunqyBuilder().sequential_runner().retries(2, backoff_s=0).build(registry) as worker:
        assert isinstance(worker, Worker)
        response = worker.runner.run_task(TaskRequest("t1", {"n": 1}))
    assert (response.result, response.error, seen) == ({"n": 1}, None, [1, 2, 3])


class UpstreamTimeout(Exception):
    """An exception of the worker's own, retried by class."""


def test_retries_on_exception_classes_retry_them_like_retryable_error() -> None:
    registry = Registry()
    seen: list[int] = []

    @registry.task
    def flaky(payload: Any) -> Any:
        seen.append(current_task().attempt)
        if len(seen) == 1:
            raise ConnectionError("reset by peer")
        if len(seen) == 2:
            raise UpstreamTimeout("no answer")
        return payload

    builder = RunqyBuilder().sequential_runner().retries(2, backoff_s=0, on=[ConnectionError, UpstreamTimeout])
    assert builder.settings().retry_exceptions == ["ConnectionError", f"{__name__}.UpstreamTimeout"]
    with builder.build(registry) as worker:
        response = worker.runner.run_task(TaskRequest("t1", {"n": 1}))
    assert (response.result, response.error, seen) == ({"n": 1}, None, [1, 2, 3])


def test_retries_on_a_class_that_cannot_be_found_by_name_is_refused() -> None:
    class Local(Exception):
        pass

    with pytest.raises(ConfigError, match="not at the top level"):
        RunqyBuilder().retries(1, on=[Local])


def test_thread_runner_from_the_builder_has_the_requested_size() -> None:
    registry = Registry()
    registry.task(lambda payload: payload)
    with RunqyBuilder().thread_runner(max_threads=3).build(registry) as worker:
        assert worker.runner.capacity == 3
