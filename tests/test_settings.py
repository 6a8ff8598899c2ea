"""Settings resolution: one test per precedence edge, and errors that name the field and its source."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
from config_env import flat, isolate, write_config, write_pyproject

from runqy.config.catalog import BUILTIN_RUNNERS
from runqy.config.resolve import describe_settings, load_settings, resolve_settings
from runqy.config.settings import RUNNER_ALIASES, resolve_runner_class
from runqy.errors import ConfigError, ConfigWarning
from runqy.runners.eventloop import AsyncRunner
from runqy.runners.hybrid import HybridRunner
from runqy.runners.process import PersistentProcessRunner
from runqy.runners.sequential import SequentialRunner
from runqy.runners.thread import ThreadRunner


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def resolved(**overrides: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The resolved settings (dotted) and the origin of each, as `runqy config --json` reports them."""
    report = describe_settings(overrides)
    return flat(report["settings"]), report["sources"]


def test_defaults_run_tasks_sequentially(tmp_path: Path) -> None:
    values, sources = resolved()
    assert values["runner_cls"] is None and values["task_timeout_s"] is None
    assert resolve_settings().runner_name == "sequential"
    assert set(sources.values()) == {"default"}


def test_precedence_pyproject_over_default(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, "[tool.runqy]\ntask_timeout_s = 7\n")
    values, sources = resolved()
    assert values["task_timeout_s"] == 7
    assert sources["task_timeout_s"] == f"pyproject:{pyproject}"
    assert sources["max_retries"] == "default"


def test_precedence_config_file_over_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyproject(tmp_path, "[tool.runqy]\ntask_timeout_s = 7\nmax_retries = 1\n")
    config = write_config(tmp_path, "task_timeout_s = 8\n")
    monkeypatch.setenv("RUNQY_CONFIG", str(config))
    values, sources = resolved()
    assert values["task_timeout_s"] == 8
    assert sources["task_timeout_s"] == f"config:{config}"
    assert sources["max_retries"] == f"pyproject:{tmp_path / 'pyproject.toml'}"  # not in the file: still read


def test_precedence_env_over_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_CONFIG", str(write_config(tmp_path, "task_timeout_s = 8\n")))
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "9")
    values, sources = resolved()
    assert values["task_timeout_s"] == 9
    assert sources["task_timeout_s"] == "env:RUNQY_TASK_TIMEOUT_S"


def test_precedence_code_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "9")
    values, sources = resolved(task_timeout_s=10)
    assert values["task_timeout_s"] == 10
    assert sources["task_timeout_s"] == "code"


def test_precedence_code_none_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit None in code means "no limit", whatever the environment says."""
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "9")
    values, sources = resolved(task_timeout_s=None)
    assert values["task_timeout_s"] is None
    assert sources["task_timeout_s"] == "code"


def test_precedence_nested_env_over_pyproject_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = write_pyproject(
        tmp_path,
        '[tool.runqy]\nrunner_cls = "hybrid"\n[tool.runqy.runner]\nnum_processes = 2\nthreads_per_process = 3\n',
    )
    monkeypatch.setenv("RUNQY_RUNNER__THREADS_PER_PROCESS", "5")
    values, sources = resolved()
    assert (values["runner.num_processes"], values["runner.threads_per_process"]) == (2, 5)
    assert sources["runner.threads_per_process"] == "env:RUNQY_RUNNER__THREADS_PER_PROCESS"
    assert sources["runner.num_processes"] == f"pyproject:{pyproject}"  # tables merge key by key


def test_precedence_runner_table_as_json_env_over_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_CONFIG", str(write_config(tmp_path, "[runner]\nmax_threads = 2\n")))
    monkeypatch.setenv("RUNQY_RUNNER", '{"max_threads": 6}')
    values, sources = resolved(runner_cls="thread")
    assert values["runner.max_threads"] == 6
    assert sources["runner.max_threads"] == "env:RUNQY_RUNNER"


def test_python_workers_alone_selects_a_thread_runner_of_that_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "4")
    values, sources = resolved()
    assert (values["runner_cls"], values["runner.max_threads"]) == ("thread", 4)
    assert sources["runner_cls"] == sources["runner.max_threads"] == "env:RUNQY_PYTHON_WORKERS"
    with resolve_settings().build_runner() as runner:
        assert type(runner).__name__ == "ThreadRunner"
        assert runner.capacity == 4


def test_python_workers_1_stays_sequential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "1")
    settings = load_settings()
    assert settings.runner_name == "sequential"
    assert settings.runner.max_threads is None


def test_python_workers_size_a_named_thread_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyproject(tmp_path, '[tool.runqy]\nrunner_cls = "thread"\n')
    monkeypatch.setenv("RUNQY_PYTHON_WORKERS", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        settings = resolve_settings()
    assert settings.runner.max_threads == 3


def test_negative_timeout_in_env_names_variable_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match=r"task_timeout_s = '-1' in environment variable RUNQY_TASK_TIMEOUT_S") as err:
        resolve_settings()
    assert "greater than 0" in str(err.value)
    assert err.value.fields == ("task_timeout_s",)


def test_wrong_type_in_pyproject_names_file_and_field(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, '[tool.runqy]\nmax_retries = "twice"\n')
    with pytest.raises(ConfigError, match=rf"max_retries = 'twice' in \[tool.runqy\] of {pyproject}"):
        resolve_settings()


def test_wrong_type_in_config_file_names_file_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, "[runner]\nnum_processes = 0\n")
    monkeypatch.setenv("RUNQY_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"runner.num_processes = 0 in {config} \(the RUNQY_CONFIG file\)"):
        resolve_settings()


def test_unknown_log_level_lists_the_allowed_values(tmp_path: Path) -> None:
    write_pyproject(tmp_path, '[tool.runqy]\nlog_level = "LOUD"\n')
    with pytest.raises(ConfigError, match=r"log_level = 'LOUD'.*'DEBUG', 'INFO', 'WARNING' or 'ERROR'"):
        resolve_settings()


def test_typo_in_pyproject_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, "[tool.runqy]\ntask_timeout = 5\n")
    with pytest.raises(
        ConfigError, match=rf"task_timeout: unknown setting, set in \[tool.runqy\] of {pyproject}"
    ) as err:
        resolve_settings()
    assert "did you mean 'task_timeout_s'?" in str(err.value)


def test_typo_in_config_file_runner_table_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, "[runner]\nmax_thread = 4\n")
    monkeypatch.setenv("RUNQY_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"runner.max_thread: unknown setting, set in {config}") as err:
        resolve_settings()
    assert "did you mean 'max_threads'?" in str(err.value)


def test_config_file_written_like_a_pyproject_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_CONFIG", str(write_config(tmp_path, '[tool.runqy]\nrunner_cls = "thread"\n')))
    with pytest.raises(ConfigError, match=r"holds the settings at its top level, not under \[tool.runqy\]"):
        resolve_settings()


def test_typo_in_nested_env_var_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_RUNNER__MAX_THREAD", "4")
    with pytest.raises(ConfigError, match=r"runner.max_thread: unknown setting, set in environment variable"):
        resolve_settings()


def test_unknown_runner_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, 'runner_cls = "threads"\n')
    monkeypatch.setenv("RUNQY_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"unknown runner 'threads'.*sequential, thread, process, hybrid") as err:
        resolve_settings()
    assert f"runner_cls from {config} (the RUNQY_CONFIG file)" in str(err.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.runqy\nrunner_cls = 'thread'\n")
    with pytest.raises(ConfigError, match=rf"{pyproject}: not valid TOML"):
        resolve_settings()


def test_missing_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"RUNQY_CONFIG=.*nope.toml: no such file"):
        resolve_settings()


def test_misspelt_env_var_warns_with_the_right_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT", "5")
    with pytest.warns(ConfigWarning, match=r"RUNQY_TASK_TIMEOUT is not a runqy setting.*RUNQY_TASK_TIMEOUT_S\?"):
        settings = resolve_settings()
    assert settings.task_timeout_s is None


def test_other_runqy_env_vars_pass_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Go worker's own RUNQY_* variables and runqy's non-setting ones are no typos."""
    monkeypatch.setenv("RUNQY_SERVER_URL", "http://queue:8080")
    monkeypatch.setenv("RUNQY_CHILD_PROCESS", "0")
    monkeypatch.setenv("RUNQY_CONFIG", str(write_config(tmp_path, "")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_settings()


def test_load_settings_refuses_a_built_in_runner_missing_from_this_installation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a runner whose module a trimmed installation (or an older version) lacks.
    missing = dataclasses.replace(BUILTIN_RUNNERS["hybrid"], path="runqy.runners.not_installed:HybridRunner")
    monkeypatch.setitem(BUILTIN_RUNNERS, "hybrid", missing)
    with pytest.raises(ConfigError, match=r"the 'hybrid' runner is not available yet in this version of runqy"):
        load_settings(runner_cls="hybrid")


#: Each built-in runner by its alias in another case, and by its class name.
NAMED_RUNNERS = [
    ("SEQUENTIAL", SequentialRunner),
    ("Thread", ThreadRunner),
    ("PROCESS", PersistentProcessRunner),
    ("HyBrId", HybridRunner),
    ("Async", AsyncRunner),
    ("SequentialRunner", SequentialRunner),
    ("ThreadRunner", ThreadRunner),
    ("PersistentProcessRunner", PersistentProcessRunner),
    ("HybridRunner", HybridRunner),
    ("AsyncRunner", AsyncRunner),
]


@pytest.mark.parametrize(("name", "runner_cls"), NAMED_RUNNERS)
def test_runner_names_in_any_case_and_class_names_select_the_runner(
    name: str, runner_cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNQY_RUNNER_CLS", name)
    assert type(load_settings().build_runner()) is runner_cls


def test_the_names_above_cover_every_built_in_runner() -> None:
    assert {runner_cls for _, runner_cls in NAMED_RUNNERS} == {resolve_runner_class(a) for a in RUNNER_ALIASES}
