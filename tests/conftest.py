"""Shared fixtures: write a worker script, start it as the Go worker would, talk to it over real pipes."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runqy.local import LocalWorker

#: Environment of every spawned worker: no RUNQY_* setting leaks in from the developer's shell.
CLEAN_ENV = {key: value for key, value in os.environ.items() if not key.startswith("RUNQY_")}

WorkerFactory = Callable[..., LocalWorker]


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
