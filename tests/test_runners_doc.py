"""docs/runners.md stays true: its configuration resolves as it says, its examples behave as it says."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from config_env import isolate

from runqy.app import default_registry
from runqy.config.resolve import load_settings
from runqy.errors import ConfigWarning, TaskFailed
from runqy.runners.thread import ThreadRunner
from runqy.worker import Worker

DOC = Path(__file__).resolve().parent.parent / "docs" / "runners.md"
TEXT = DOC.read_text()


def block(language: str, containing: str) -> str:
    (found,) = [b for b in re.findall(rf"^```{language}\n(.*?)^```$", TEXT, re.M | re.S) if containing in b]
    return str(found)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No RUNQY_* variable, an empty working directory, and an empty default registry for the examples."""
    isolate(monkeypatch, tmp_path)
    saved = default_registry.handler, default_registry.loader
    default_registry.handler = default_registry.loader = None
    yield
    default_registry.handler, default_registry.loader = saved


def test_the_toml_example_selects_a_thread_runner_of_16(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(block("toml", 'runner_cls = "thread"'))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        runner = load_settings().build_runner()
    assert isinstance(runner, ThreadRunner) and runner.capacity == 16


def test_the_cooperative_handler_stops_once_timed_out_and_map_runs_it() -> None:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(block("python", "cancelled"), f"{DOC}:cooperative", "exec"), namespace)
    exec(compile(block("python", "worker.map"), f"{DOC}:map", "exec"), namespace)
    assert namespace["results"] == ["done"] * 20
    settings = load_settings(python_workers=2, task_timeout_s=0.2)
    with Worker(settings) as worker:
        (outcome,) = worker.map([{"steps_s": [0.01] * 1000}], return_exceptions=True)
        assert isinstance(outcome, TaskFailed) and "task_timeout_s=0.2" in (outcome.response.error or "")
