"""Runner names as pytest parameters: a runner this checkout does not have yet is skipped, saying so."""

from __future__ import annotations

from typing import Any

import pytest

from runqy.errors import ConfigError
from runqy.settings import RUNNER_ALIASES, resolve_runner_class

__all__ = ["ALL_RUNNERS", "runner_params"]

ALL_RUNNERS = tuple(RUNNER_ALIASES)


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
