"""Whole-configuration checks: impossible combinations fail when settings are built, useless ones warn."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
from config_env import isolate, write_pyproject

from runqy.config.catalog import BUILTIN_RUNNERS, import_runner
from runqy.config.resolve import resolve_settings
from runqy.errors import ConfigError, ConfigWarning

CUSTOM_RUNNER = """
from runqy.runners.base import Capabilities
from runqy.runners.sequential import SequentialRunner


class KillingRunner(SequentialRunner):
    capabilities = Capabilities(hard_timeout=True, shares_load_context=True, cpu_parallel=False)


class NotARunner:
    pass
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


@pytest.mark.parametrize("runner_cls", ["thread", "sequential", "hybrid", None])
def test_hard_timeout_is_refused_by_runners_that_abandon_threads(runner_cls: str | None) -> None:
    with pytest.raises(ConfigError, match=r"require_hard_timeout = true, but the '\w+' runner cannot stop") as err:
        resolve_settings({"runner_cls": runner_cls, "require_hard_timeout": True, "task_timeout_s": 5})
    assert 'fix: use runner_cls = "process"' in str(err.value)
    assert "require_hard_timeout from code" in str(err.value)


def test_hard_timeout_is_accepted_by_the_process_runner() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        settings = resolve_settings({"runner_cls": "process", "require_hard_timeout": True, "task_timeout_s": 5})
    assert settings.require_hard_timeout


def test_hard_timeout_without_a_timeout_warns() -> None:
    with pytest.warns(ConfigWarning, match=r"require_hard_timeout = true has no effect.*set task_timeout_s"):
        resolve_settings({"runner_cls": "process", "require_hard_timeout": True})


def test_threads_per_process_on_the_thread_runner_warns_with_the_fix(tmp_path: Path) -> None:
    pyproject = write_pyproject(
        tmp_path, '[tool.runqy]\nrunner_cls = "thread"\n[tool.runqy.runner]\nthreads_per_process = 4\n'
    )
    with pytest.warns(ConfigWarning, match=r"runner.threads_per_process is ignored by the thread runner") as record:
        resolve_settings()
    assert "fix: size the pool with runner.max_threads" in str(record[0].message)
    assert f"(runner.threads_per_process from [tool.runqy] of {pyproject})" in str(record[0].message)


def test_a_default_value_spelt_out_is_not_reported() -> None:
    """Re-validating resolved settings (a dump, a copy in a child) must not turn defaults into warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        dump = asdict(resolve_settings({"runner_cls": "process"}))
        assert resolve_settings(dump).runner_cls == "process"


@pytest.mark.parametrize("field", ["max_tasks_per_child", "max_memory_per_child_mb"])
def test_recycling_without_child_processes_warns(field: str) -> None:
    with pytest.warns(
        ConfigWarning, match=rf"{field} is ignored by the thread runner \(it applies to: process, hybrid\)"
    ):
        resolve_settings({"runner_cls": "thread", field: 100})


def test_abandoned_threads_limit_on_the_process_runner_warns() -> None:
    with pytest.warns(ConfigWarning, match=r"max_abandoned_threads is ignored by the process runner.*kills"):
        resolve_settings({"runner_cls": "process", "max_abandoned_threads": 2})


def test_hybrid_with_one_thread_per_process_warns() -> None:
    with pytest.warns(ConfigWarning, match=r"threads_per_process = 1 makes the hybrid runner a process runner"):
        resolve_settings({"runner_cls": "hybrid", "runner": {"num_processes": 2, "threads_per_process": 1}})


@pytest.mark.parametrize(
    ("runner", "fix"),
    [("sequential", 'runner_cls = "thread"'), ("process", "runner.num_processes"), ("hybrid", "threads_per_process")],
)
def test_python_workers_with_a_runner_that_cannot_use_it_warns(
    runner: str, fix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "4")
    with pytest.warns(ConfigWarning, match=r"python_workers = 4 is ignored") as record:
        settings = resolve_settings({"runner_cls": runner})
    assert fix in str(record[0].message)
    assert settings.runner_name == runner  # the named runner wins


def test_python_workers_and_a_different_max_threads_warns() -> None:
    with pytest.warns(ConfigWarning, match=r"python_workers = 4 is ignored: runner.max_threads = 8"):
        settings = resolve_settings({"runner_cls": "thread", "python_workers": 4, "runner": {"max_threads": 8}})
    assert settings.runner.max_threads == 8


def test_warnings_can_be_made_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        with pytest.raises(ConfigWarning):
            resolve_settings({"runner_cls": "sequential", "runner": {"max_threads": 4}})


def test_num_processes_below_one_is_an_error_naming_the_field() -> None:
    with pytest.raises(
        ConfigError, match=r"runner.num_processes = 0 in code: Input should be greater than or equal to 1"
    ):
        resolve_settings({"runner_cls": "process", "runner": {"num_processes": 0}})


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("collections:OrderedDict", "not a runqy Runner subclass"),
        ("custom_runners:NotARunner", "not a runqy Runner subclass"),
        ("custom_runners:Missing", "is nothing, not a runqy Runner subclass"),
        ("runqy.runners.base:Runner", "is abstract"),
        ("no_such_module_here:Runner", "cannot import module 'no_such_module_here'"),
    ],
)
def test_runner_cls_path_must_name_a_runner_subclass(
    path: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "custom_runners.py").write_text(CUSTOM_RUNNER)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_pyproject(tmp_path, f'[tool.runqy]\nrunner_cls = "{path}"\n')
    with pytest.raises(ConfigError, match=why) as err:
        resolve_settings()
    assert f"runner_cls from [tool.runqy] of {tmp_path / 'pyproject.toml'}" in str(err.value)


def test_a_custom_runner_is_checked_against_its_own_capabilities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "custom_runners.py").write_text(CUSTOM_RUNNER)
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = resolve_settings(
        {"runner_cls": "custom_runners:KillingRunner", "require_hard_timeout": True, "task_timeout_s": 1}
    )
    with settings.build_runner() as runner:
        assert type(runner).__name__ == "KillingRunner"


@pytest.mark.parametrize("alias", sorted(BUILTIN_RUNNERS))
def test_catalog_matches_what_each_runner_declares(alias: str) -> None:
    spec = BUILTIN_RUNNERS[alias]
    cls = import_runner(alias)
    assert cls.capabilities == spec.capabilities
    assert f"{cls.__module__}:{cls.__name__}" == spec.path


@pytest.mark.parametrize("runner", ["sequential", "process", "hybrid"])
def test_one_python_worker_is_never_reported(runner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment may export RUNQY_PYTHON_WORKERS=1 everywhere; it asks for nothing any runner fails to do."""
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        assert resolve_settings({"runner_cls": runner}).runner_name == runner
