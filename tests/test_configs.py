"""Every ready-made file in configs/ loads cleanly and builds the runner it is written for."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from config_env import isolate

from runqy.config.catalog import find_builtin
from runqy.config.resolve import resolve_settings
from runqy.errors import ConfigError, ConfigWarning

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

#: Tasks each file runs at once, as its comments promise.
CAPACITY = {
    "io-bound-api.toml": 16,
    "llama-cpp-inference.toml": 2,
    "cpu-bound.toml": 4,
    "mixed-hybrid.toml": 8,
    "development.toml": 1,
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def test_every_config_file_is_listed_here() -> None:
    assert sorted(path.name for path in CONFIGS.glob("*.toml")) == sorted(CAPACITY)


@pytest.mark.parametrize("name", sorted(CAPACITY))
def test_config_file_builds_its_runner(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQY_CONFIG", str(CONFIGS / name))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # a ready-made file sets nothing its runner ignores
        settings = resolve_settings()
    spec = find_builtin(settings.runner_name)
    assert spec is not None
    try:
        runner_cls = settings.runner_class()
    except ConfigError as exc:
        if "not available" not in str(exc):
            raise
        pytest.skip(f"{name}: the {spec.alias} runner is not on this branch yet ({exc})")
    runner = settings.build_runner()
    try:
        assert isinstance(runner, runner_cls)
        assert runner.capacity == CAPACITY[name]
    finally:
        runner.close()
