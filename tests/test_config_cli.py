"""`runqy config` run as the real command: each source layer changes the result and is named."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import pytest
from config_env import isolate, write_config, write_pyproject
from runner_params import CLEAN_ENV

from runqy.cli.options import add_settings_options, settings_arguments, settings_overrides
from runqy.config.descriptions import setting_descriptions
from runqy.config.settings import RunnerOptions, RunqySettings
from runqy.local.driver import LocalWorker

BUILDER_SCRIPT = """
import json
from runqy import RunqyBuilder

print(json.dumps(RunqyBuilder().sequential_runner().describe()))
"""

WORKER = """
from runqy import task

@task
def handle(payload):
    return payload
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def runqy(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runqy", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def config_json(cwd: Path, **env: str) -> dict[str, Any]:
    done = runqy(cwd, "config", "--json", **env)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_each_layer_changes_the_runner_and_names_the_winning_source(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, '[tool.runqy]\nrunner_cls = "thread"\n')
    report = config_json(tmp_path)
    assert (report["settings"]["runner_cls"], report["sources"]["runner_cls"]) == ("thread", f"pyproject:{pyproject}")

    config = write_config(tmp_path, 'runner_cls = "process"\n')
    env = {"RUNQY_CONFIG": str(config)}
    report = config_json(tmp_path, **env)
    assert (report["settings"]["runner_cls"], report["sources"]["runner_cls"]) == ("process", f"config:{config}")

    env["RUNQY_RUNNER_CLS"] = "hybrid"
    report = config_json(tmp_path, **env)
    assert (report["settings"]["runner_cls"], report["sources"]["runner_cls"]) == ("hybrid", "env:RUNQY_RUNNER_CLS")
    assert report["runner"]["class"] == "runqy.runners.hybrid:HybridRunner"

    (tmp_path / "build.py").write_text(BUILDER_SCRIPT)
    done = subprocess.run(
        [sys.executable, "build.py"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["settings"]["runner_cls"], report["sources"]["runner_cls"]) == ("sequential", "code")
    assert report["runner"]["available"] is True


def test_the_command_line_wins_over_the_same_setting_in_the_environment(tmp_path: Path) -> None:
    env = {"RUNQY_RUNNER_CLS": "process", "RUNQY_TASK_TIMEOUT_S": "5", "RUNQY_RUNNER__MAX_THREADS": "7"}
    done = runqy(
        tmp_path, "config", "--json", "--runner", "thread", "--task-timeout-s", "2", "--max-threads", "3", **env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    settings, sources = report["settings"], report["sources"]
    assert (settings["runner_cls"], settings["task_timeout_s"], settings["runner"]["max_threads"]) == ("thread", 2, 3)
    assert sources["runner_cls"] == sources["task_timeout_s"] == sources["runner.max_threads"] == "cli"


def test_a_list_setting_takes_one_value_per_option_and_passes_on_whole(tmp_path: Path) -> None:
    names = ["--retry-exceptions", "ConnectionError", "--retry-exceptions", "TimeoutError"]
    done = runqy(tmp_path, "config", "--json", *names)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["settings"]["retry_exceptions"] == ["ConnectionError", "TimeoutError"]
    assert report["sources"]["retry_exceptions"] == "cli"
    # runqy local and runqy bench hand their settings on to the runqy run they start.
    parser = argparse.ArgumentParser()
    add_settings_options(parser)
    handed_on = settings_arguments(parser.parse_args([*names, "--max-threads", "3"]))
    assert settings_overrides(parser.parse_args(handed_on)) == {
        "retry_exceptions": ["ConnectionError", "TimeoutError"],
        "runner": {"max_threads": 3},
    }


def test_a_worker_runs_with_the_command_lines_setting_over_the_environments(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    argv = [sys.executable, "-m", "runqy", "run", "worker.py", "--runner", "thread", "--max-threads", "3"]
    env = {**CLEAN_ENV, "RUNQY_RUNNER_CLS": "process", "RUNQY_RUNNER__MAX_THREADS": "7", "RUNQY_LOG_LEVEL": "INFO"}
    with LocalWorker(argv, env=env, cwd=str(tmp_path)) as worker:
        worker.wait_ready(timeout_s=30)
        assert worker.call({"n": 1}, timeout_s=10)["result"] == {"n": 1}
        assert worker.shutdown() == 0
    assert any("ready: <ThreadRunner capacity=3>" in line for line in worker.stderr_lines), worker.stderr_lines


def test_python_workers_alone_reports_a_4_thread_runner(tmp_path: Path) -> None:
    report = config_json(tmp_path, RUNQY_PYTHON_WORKERS="4")
    assert report["runner"]["name"] == "thread"
    assert report["settings"]["runner"]["max_threads"] == 4
    assert report["sources"]["runner.max_threads"] == "env:RUNQY_PYTHON_WORKERS"
    assert report["warnings"] == []


def test_every_setting_has_a_source(tmp_path: Path) -> None:
    report = config_json(tmp_path)
    nested = {f"runner.{name}" for name in report["settings"]["runner"]}
    assert set(report["sources"]) == (set(report["settings"]) - {"runner"}) | nested
    assert set(report["sources"].values()) == {"default"}


def test_text_output_names_sources_and_warnings(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, '[tool.runqy]\nrunner_cls = "thread"\nmax_tasks_per_child = 5\n')
    done = runqy(tmp_path, "config", "--max-retries", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("runner: thread (runqy.runners.thread:ThreadRunner)")
    assert any(line.split() == ["max_retries", "3", "the", "command", "line"] for line in lines)
    assert any(line.split()[:2] == ["runner_cls", '"thread"'] and str(pyproject) in line for line in lines)
    assert "max_tasks_per_child is ignored by the thread runner" in done.stdout


def test_typo_is_an_error_naming_key_and_file_for_config_and_run_alike(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, "[tool.runqy]\nmax_retry = 2\n")
    (tmp_path / "worker.py").write_text(WORKER)
    for args in (["config"], ["run", "worker.py"]):
        done = runqy(tmp_path, *args)
        assert done.returncode == 2
        assert f"max_retry: unknown setting, set in [tool.runqy] of {pyproject}" in done.stderr
        assert "did you mean 'max_retries'?" in done.stderr
        assert done.stdout == ""  # nothing reached the protocol


def test_invalid_env_value_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    done = runqy(tmp_path, "config", "--json", RUNQY_SHUTDOWN_TIMEOUT_S="-2")
    assert done.returncode == 2
    assert "shutdown_timeout_s = '-2' in environment variable RUNQY_SHUTDOWN_TIMEOUT_S" in done.stderr


def test_run_help_explains_every_setting_with_its_variable() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "runqy", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(shown.split())  # argparse wraps long help lines
    descriptions = setting_descriptions()
    fields = [("", spec.name, spec.name) for spec in dataclass_fields(RunqySettings) if spec.name != "runner"]
    fields += [("RUNNER__", spec.name, f"runner.{spec.name}") for spec in dataclass_fields(RunnerOptions)]
    for prefix, name, dotted in fields:
        assert descriptions.get(dotted), f"{dotted} has no docstring in runqy/config/settings.py"
        first_words = " ".join(descriptions[dotted].replace("``", "").split()[:4])
        assert f"--{name.replace('_', '-')}" in flat and first_words in flat
        assert f"[RUNQY_{prefix}{name.upper()}]" in flat
