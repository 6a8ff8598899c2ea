"""Trying a worker on this machine: a driver playing the Go worker, and what `runqy local` and `bench` build on it.

:class:`LocalWorker` starts a worker exactly as runqy-worker does and feeds it
requests; ``runqy local`` and ``runqy bench`` (in :mod:`runqy.cli`) and the test
suite use it. Nothing here is imported by a worker that serves tasks.
"""

from runqy.local.driver import LocalWorker, make_request

__all__ = ["LocalWorker", "make_request"]
