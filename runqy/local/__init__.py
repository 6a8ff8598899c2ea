"""Trying a worker on this machine: a driver playing the Go worker, and what `runqy local` and `bench` build on it.

:class:`LocalWorker` starts a worker exactly as runqy-worker does and feeds it
requests; ``runqy local`` and ``runqy bench`` (in :mod:`runqy.cli`) and the test
suite use it. Nothing here is imported by a worker that serves tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runqy.local.driver import LocalWorker, make_request

__all__ = ["LocalWorker", "make_request"]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``runqy run`` builds the parsers of ``runqy local`` and ``runqy
    # bench`` from this package's light modules, and a serving worker needs no driver.
    if name not in __all__:
        raise AttributeError(f"module 'runqy.local' has no attribute {name!r}")
    from runqy.local import driver

    return getattr(driver, name)
