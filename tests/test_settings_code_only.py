"""Settings given in code alone: built without pydantic-settings, and the same as through every source.

A worker with no ``RUNQY_*`` setting, no ``RUNQY_CONFIG`` file and no ``[tool.runqy]``
table starts without importing pydantic-settings, and without pydantic when its values
need no validation; its settings, errors and warnings must be exactly those of the
full resolution. An empty ``[tool.runqy]`` table sets
nothing but makes the full resolution run, so comparing the two folders compares the
two ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
from config_env import isolate, write_pyproject
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from runqy.config.as_given import as_validated
from runqy.config.presence import outside_sources
from runqy.config.resolve import resolve_settings
from runqy.config.settings import RunqySettings
from runqy.config.validation import validated_values
from runqy.errors import ConfigError

FIELDS = {spec.name for spec in fields(RunqySettings)}

WORKER = """\
import sys
from runqy import run, task

@task
def handle(payload):
    return {"pydantic_settings": "pydantic_settings" in sys.modules}

if __name__ == "__main__":
    run(**{kwargs})
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def serve_one(folder: Path, command: list[str], **env: str) -> dict[str, Any]:
    """Start a real worker in ``folder``, send one task, close stdin; its answer and every line it wrote."""
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNQY_")}
    done = subprocess.run(
        [sys.executable, *command],
        input=b'{"task_id": "t1", "payload": null}\n',
        capture_output=True,
        cwd=folder,
        env={**environ, **env},
        timeout=60,
        check=True,
    )
    ready, answer = (json.loads(line) for line in done.stdout.splitlines())
    assert ready == {"status": "ready"}
    assert answer["task_id"] == "t1" and answer["error"] is None
    result: dict[str, Any] = answer["result"]
    return result


@pytest.mark.parametrize("how", ["run()", "runqy run"])
def test_a_worker_configured_in_code_alone_never_imports_pydantic_settings(tmp_path: Path, how: str) -> None:
    (tmp_path / "worker.py").write_text(WORKER.replace("{kwargs}", '{"workers": 2}'))
    # A worker's pyproject.toml names runqy among its dependencies, with no [tool.runqy] table.
    write_pyproject(tmp_path, '[project.optional-dependencies]\nserve = ["runqy"]\n')
    command = ["worker.py"] if how == "run()" else ["-m", "runqy", "run", "worker.py", "--shutdown-timeout-s", "5"]
    # The Go worker's own variables share the prefix but are no settings.
    assert serve_one(tmp_path, command, RUNQY_QUEUES="inference", RUNQY_CONCURRENCY="4") == {"pydantic_settings": False}


@pytest.mark.parametrize(
    ("env", "pyproject"),
    [({"RUNQY_TASK_TIMEOUT_S": "5"}, None), ({}, "[tool.runqy]\ntask_timeout_s = 5\n")],
    ids=["variable", "table"],
)
def test_a_worker_with_a_source_resolves_it_through_pydantic_settings(
    tmp_path: Path, env: dict[str, str], pyproject: str | None
) -> None:
    (tmp_path / "worker.py").write_text(WORKER.replace("{kwargs}", "{}"))
    if pyproject is not None:
        write_pyproject(tmp_path, pyproject)
    assert serve_one(tmp_path, ["worker.py"], **env) == {"pydantic_settings": True}


def test_settings_from_a_table_or_a_variable_equal_the_same_values_given_in_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_code = resolve_settings({"task_timeout_s": 5, "runner": {"max_threads": 3}, "runner_cls": "thread"})
    write_pyproject(tmp_path, '[tool.runqy]\ntask_timeout_s = 5\nrunner_cls = "thread"\n')
    monkeypatch.setenv("RUNQY_RUNNER__MAX_THREADS", "3")
    from_sources = resolve_settings()
    assert type(from_sources) is RunqySettings
    assert from_sources == in_code
    assert from_sources.runner.max_threads == 3 and from_sources.task_timeout_s == 5


VALID = [
    {},
    {"python_workers": 1},
    {"python_workers": 8},
    {"python_workers": "4"},  # pydantic's lax mode turns the text into a number: both ways alike
    {"runner_cls": "process", "runner": {"num_processes": 2}, "max_tasks_per_child": 10},
    {"runner_cls": "hybrid", "runner": {"num_processes": 2, "threads_per_process": 4}},
    {"task_timeout_s": 0.5, "max_retries": 2, "retry_exceptions": ["ConnectionError"]},
    {"runner_cls": "process", "require_hard_timeout": True, "task_timeout_s": 1},
    {"log_level": "DEBUG", "log_format": "json", "slow_task_s": 2, "batch_size": 8},
]
INVALID = [
    {"python_workers": 0},
    {"python_workers": "many"},
    {"log_level": "LOUD"},
    {"unknown_setting": 1},
    {"runner": {"max_thread": 4}},
    {"retry_exceptions": ["NoSuchError"]},
    {"require_hard_timeout": True, "runner_cls": "thread"},
    {"runner_cls": "no.such.module:Runner"},
]
WARNED = [
    {"python_workers": 4, "runner_cls": "sequential"},
    {"runner_cls": "thread", "runner": {"num_processes": 2}},
    {"runner_cls": "process", "require_hard_timeout": True},
]


def both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]) -> list[Any]:
    """The outcome of resolving ``overrides`` in code alone, then through every source (an empty table)."""
    outcomes = []
    for folder, table in (("code-only", None), ("full", "[tool.runqy]\n")):
        (tmp_path / folder).mkdir()
        if table is not None:
            write_pyproject(tmp_path / folder, table)
        monkeypatch.chdir(tmp_path / folder)
        assert bool(outside_sources(FIELDS)) == (table is not None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome: Any = resolve_settings(overrides)
            except ConfigError as exc:
                outcome = ("ConfigError", str(exc), exc.fields)
        outcomes.append((outcome, [(w.category, str(w.message)) for w in caught]))
    return outcomes


@pytest.mark.parametrize("overrides", VALID + INVALID + WARNED, ids=repr)
def test_code_alone_gives_the_settings_errors_and_warnings_of_the_full_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    code_only, full = both_ways(tmp_path, monkeypatch, overrides)
    assert code_only == full
    outcome, caught = code_only
    assert isinstance(outcome, RunqySettings) == (overrides not in INVALID)
    assert bool(caught) == (overrides in WARNED)


def test_what_counts_as_a_source(tmp_path: Path) -> None:
    assert outside_sources(FIELDS, {}, tmp_path) == []
    quiet = {"RUNQY_QUEUES": "q", "RUNQY_CHILD_PROCESS": "1", "RUNQY_CONFIG": "", "PATH": "/bin"}
    assert outside_sources(FIELDS, quiet, tmp_path) == []
    for name in ("RUNQY_TASK_TIMEOUT_S", "runqy_log_level", "RUNQY_RUNNER__MAX_THREADS", "RUNQY_CONFIG"):
        assert outside_sources(FIELDS, {name: "x"}, tmp_path) == [name]
    pyproject = write_pyproject(tmp_path, 'dependencies = ["runqy"]\n')
    assert outside_sources(FIELDS, {}, tmp_path) == []
    for body in ("[tool.runqy]\n", "[tool.runqy.runner]\nmax_threads = 2\n", "[tool]\nrunqy = {}\n", "[tool.runqy\n"):
        pyproject.write_text(body)
        assert outside_sources(FIELDS, {}, tmp_path) == [str(pyproject)], body


def test_a_misspelt_variable_is_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a setting, so no source: the settings come from code alone, and the likely typo is still named.
    monkeypatch.setenv("RUNQY_TASK_TIMEOUT", "5")
    assert outside_sources(FIELDS) == []
    with pytest.warns(UserWarning, match="did you mean RUNQY_TASK_TIMEOUT_S"):
        assert resolve_settings().task_timeout_s is None


# Values given in code, any field, any scalar: most need validation, some are kept as given.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=70_000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["thread", "process", "hybrid", "async", "sequential", "INFO", "DEBUG", "json", "4", "0.5"])
    | st.text(max_size=5)
)
code_values = st.dictionaries(st.sampled_from(sorted(FIELDS)), scalars, max_size=4)


def validated(values: dict[str, Any], build: Any) -> tuple[Any, list[str]]:
    """The settings ``build`` makes of ``values``, every value with its type, and the warnings; or the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            settings: RunqySettings = build(values)
        except (ValidationError, ConfigError):
            return "rejected", []
    typed = {name: (type(value), value) for name, value in asdict(settings).items() if name != "runner"}
    runner = {name: (type(value), value) for name, value in asdict(settings.runner).items()}
    return (typed, runner), [str(w.message) for w in caught]


def through_pydantic(values: dict[str, Any]) -> RunqySettings:
    return RunqySettings(**validated_values(RunqySettings, values))


@settings(max_examples=300, deadline=None)
@given(code_values)
def test_values_checked_without_pydantic_make_the_settings_pydantic_makes(values: dict[str, Any]) -> None:
    if as_validated(RunqySettings, values) is None:
        return  # validated by pydantic on either path
    assert validated(values, lambda v: RunqySettings(**v)) == validated(values, through_pydantic)


def test_what_needs_no_pydantic() -> None:
    assert as_validated(RunqySettings, {}) == {}
    plain = {"python_workers": 4, "log_level": "DEBUG", "task_timeout_s": 2.5, "retry_exceptions": ["OSError"]}
    assert as_validated(RunqySettings, plain) == plain
    converted = as_validated(RunqySettings, {"task_timeout_s": 5, "runner": {"max_threads": 2}})
    assert converted is not None and type(converted["task_timeout_s"]) is float
    assert converted["runner"].max_threads == 2
    for needs_pydantic in (
        {"python_workers": "4"},  # text for a number: converted
        {"python_workers": True},  # a bool for an int: converted
        {"task_timeout_s": 2**60},  # an int no float holds exactly
        {"python_workers": 0},  # out of bounds: pydantic's error
        {"log_level": "info"},  # not one of the literals
        {"retry_exceptions": ("OSError",)},  # a tuple for a list
        {"runner": {"max_threads": "2"}},  # a table with a value to convert
        {"runner": {"max_thread": 2}},  # a table with an unknown key
        {"no_such_setting": 1},
    ):
        assert as_validated(RunqySettings, needs_pydantic) is None, needs_pydantic


@pytest.mark.parametrize(
    "kwargs",
    ["{}", '{"workers": 3}', '{"workers": 3, "task_timeout_s": 30}', "runqy run --workers 3 --task-timeout-s 30"],
)
def test_a_worker_configured_in_code_alone_imports_no_pydantic(tmp_path: Path, kwargs: str) -> None:
    """Neither pydantic nor pydantic's plugin lookup (importlib.metadata) before it serves."""
    (tmp_path / "worker.py").write_text(
        WORKER.replace("{kwargs}", "{}" if kwargs.startswith("runqy") else kwargs).replace(
            'return {"pydantic_settings": "pydantic_settings" in sys.modules}',
            'heavy = ("pydantic", "pydantic_settings", "importlib.metadata")\n'
            '    return {"loaded": [name for name in heavy if name in sys.modules]}',
        )
    )
    command = ["worker.py"]
    if kwargs.startswith("runqy run"):
        command = ["-m", "runqy", "run", "worker.py", *kwargs.split()[2:]]
    assert serve_one(tmp_path, command) == {"loaded": []}
