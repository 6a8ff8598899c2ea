"""runqy: write Python workers for the runqy task queue, and run them sequentially, on threads or on processes.

Switching from runqy-python is an import change::

    from runqy import task, load, run

    @load
    def setup():
        return {"model": load_model()}

    @task
    def handle(payload, ctx):
        return ctx["model"].predict(payload)

    if __name__ == "__main__":
        run()
"""

from runqy.app import Registry, load, task
from runqy.builder import RunqyBuilder
from runqy.context import TaskInfo, current_task
from runqy.errors import ConfigError, ConfigWarning, RetryableError, RunqyError, TaskTimeout, WorkerCrashed
from runqy.settings import RunqySettings, load_settings
from runqy.worker import Worker, run, run_once

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "Registry",
    "RetryableError",
    "RunqyBuilder",
    "RunqyError",
    "RunqySettings",
    "TaskInfo",
    "TaskTimeout",
    "Worker",
    "WorkerCrashed",
    "current_task",
    "load",
    "load_settings",
    "run",
    "run_once",
    "task",
]

__version__ = "0.1.0"
