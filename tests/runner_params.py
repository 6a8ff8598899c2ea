"""Runner names as pytest parameters (a runner this checkout does not have yet is skipped, saying so); a clean env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from runqy.config.settings import RUNNER_ALIASES, resolve_runner_class
from runqy.errors import ConfigError

__all__ = ["ALL_RUNNERS", "CLEAN_ENV", "faulty_worker", "runner_params"]

ALL_RUNNERS = tuple(RUNNER_ALIASES)
#: Environment of every spawned worker: no RUNQY_* setting leaks in from the developer's shell.
CLEAN_ENV = {key: value for key, value in os.environ.items() if not key.startswith("RUNQY_")}


def faulty_worker(runner: str) -> Path:
    """tests/workers/faulty_worker.py, or its async def twin for the async runner (which runs no plain def)."""
    name = "faulty_async_worker.py" if runner == "async" else "faulty_worker.py"
    return Path(__file__).parent / "workers" / name


def _skip_reason(name: str) -> str | None:
    try:
        resolve_runner_class(name)
    except ConfigError as exc:
        return f"{exc} (the test runs by itself once the runner lands)"
    return None


def runner_params(*names: str) -> list[Any]:
    """``pytest.param`` per runner (all of them by default), skipped with the reason when unavailable."""
    params = []
    for name in names or ALL_RUNNERS:
        reason = _skip_reason(name)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params
