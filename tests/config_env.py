"""Shared set-up of the configuration tests: an environment where only the test decides the settings."""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import pytest


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Remove every RUNQY_* variable and work in an empty directory, so no real pyproject.toml leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("RUNQY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_pyproject(directory: Path, body: str) -> Path:
    """A worker repository's pyproject.toml holding ``body`` (TOML text, tables under [tool.runqy])."""
    path = directory / "pyproject.toml"
    path.write_text('[project]\nname = "a-worker"\n\n' + body)
    return path


def write_config(directory: Path, body: str, name: str = "runqy.toml") -> Path:
    """A RUNQY_CONFIG file; the caller points the variable at it."""
    path = directory / name
    path.write_text(body)
    return path


def flat(settings: Any) -> dict[str, Any]:
    """Settings as dotted names, as ``runqy config --json`` names them in "sources"."""
    values = asdict(settings) if is_dataclass(settings) else dict(settings)
    runner = values.pop("runner")
    return {**values, **{f"runner.{key}": value for key, value in runner.items()}}
