"""Fixtures shared by the test suite: the runner under contract test, and workers started as the Go worker would.

Adding a runner to the contract suite is one line in :data:`RUNNERS`.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import async_behaviours
import behaviours
import pytest
from runner_params import CLEAN_ENV

from runqy.app import Registry
from runqy.config.resolve import load_settings, resolve_settings
from runqy.local.driver import LocalWorker
from runqy.runners.base import Runner
from runqy.runners.eventloop import AsyncRunner

#: Environment of every spawned worker: no RUNQY_* setting leaks in from the developer's shell.

WorkerFactory = Callable[..., LocalWorker]

#: Every runner the contract suite runs against, with the settings (as the environment) that select it.
RUNNERS: dict[str, dict[str, str]] = {
    "sequential": {"RUNQY_RUNNER_CLS": "sequential"},
    "thread": {"RUNQY_RUNNER_CLS": "thread", "RUNQY_RUNNER__MAX_THREADS": "4"},
    "process": {"RUNQY_RUNNER_CLS": "process", "RUNQY_RUNNER__NUM_PROCESSES": "2"},
    "hybrid": {
        "RUNQY_RUNNER_CLS": "hybrid",
        "RUNQY_RUNNER__NUM_PROCESSES": "2",
        "RUNQY_RUNNER__THREADS_PER_PROCESS": "2",
    },
    # 50 coroutines: many at once, few enough for the rendezvous tests' polling.
    "async": {"RUNQY_RUNNER_CLS": "async", "RUNQY_RUNNER__MAX_CONCURRENCY": "50"},
}
#: The async runner runs async def handlers only: it serves the async twin of the behaviours worker.
BEHAVIOURS_OF = {"async": async_behaviours}

#: Worker start-up in a busy test run: far above normal, far below a hang.
STARTUP_TIMEOUT_S = 30.0
#: How long a runner may take to close at the end of a test.
CLOSE_TIMEOUT_S = 5.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNQY_* variable of the developer's shell may leak into a test."""
    for name in list(os.environ):
        if name.startswith("RUNQY_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=list(RUNNERS))
def runner_name(request: pytest.FixtureRequest) -> str:
    """The name of the runner under contract test; every contract test runs once per runner."""
    return str(request.param)


def behaviours_registry(runner_name: str = "thread") -> Registry:
    """A fresh registry holding the handler and loader of the behaviours worker that ``runner_name`` serves."""
    module = BEHAVIOURS_OF.get(runner_name, behaviours)
    registry = Registry()
    registry.load(module.setup)
    registry.task(module.handle)
    return registry


@pytest.fixture
def make_runner(runner_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Runner]]:
    """Build and start the runner under test over the behaviours worker; ``make(RUNQY_X="...")`` adds settings."""
    started: list[Runner] = []

    def make(**env: str) -> Runner:
        for name, value in {**RUNNERS[runner_name], **env}.items():
            monkeypatch.setenv(name, value)
        runner = load_settings().build_runner()
        runner.start(behaviours_registry(runner_name))
        started.append(runner)
        return runner

    yield make
    for runner in started:
        runner.close(CLOSE_TIMEOUT_S)


@pytest.fixture
def spawn(runner_name: str) -> Iterator[Callable[..., LocalWorker]]:
    """Start the behaviours worker as a real process on the runner under test, and wait for its ready line."""
    workers: list[LocalWorker] = []

    def start(**env: str) -> LocalWorker:
        base = {name: value for name, value in os.environ.items() if not name.startswith("RUNQY_")}
        target = Path(BEHAVIOURS_OF.get(runner_name, behaviours).__file__)
        worker = LocalWorker.for_target(str(target), env={**base, **RUNNERS[runner_name], **env})
        workers.append(worker)
        worker.wait_ready(STARTUP_TIMEOUT_S)
        return worker

    yield start
    for worker in workers:
        worker.__exit__(None, None, None)


def capacity_of(runner_name: str, **env: str) -> int:
    """How many tasks the runner runs at once under these settings (without starting it)."""
    saved = dict(os.environ)
    try:
        os.environ.update({**RUNNERS[runner_name], **env})
        return load_settings().build_runner().capacity
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def start_runner() -> Iterator[Callable[..., AsyncRunner]]:
    """Start an async runner in this process over a registry, with settings as keywords; closed after the test."""
    started: list[AsyncRunner] = []

    def start(registry: Registry, **settings: Any) -> AsyncRunner:
        runner = AsyncRunner.from_settings(resolve_settings({"runner_cls": "async", **settings}))
        runner.start(registry)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close(CLOSE_TIMEOUT_S)


@pytest.fixture
def write_worker(tmp_path: Path) -> Callable[[str], Path]:
    """Write a worker script from (dedented) source and return its path."""

    def write(source: str, name: str = "worker.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start ``python SCRIPT`` with pipes (killed at the end of the test); extra env vars as keywords."""
    started: list[LocalWorker] = []

    def start(script: Path, *args: str, ready: bool = True, **env: str) -> LocalWorker:
        worker = LocalWorker([sys.executable, str(script), *args], env={**CLEAN_ENV, **env}, cwd=str(tmp_path))
        started.append(worker)
        if ready:
            worker.wait_ready(timeout_s=30)
        return worker

    yield start
    for worker in started:
        worker.__exit__(None, None, None)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A real pipe: (read end, write end), both closed at the end of the test."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)
