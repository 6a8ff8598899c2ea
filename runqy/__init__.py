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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runqy.app import Registry, load, task
    from runqy.builder import RunqyBuilder
    from runqy.config.resolve import load_settings
    from runqy.config.settings import RunqySettings
    from runqy.context import TaskInfo, current_batch, current_task
    from runqy.errors import (
        ConfigError,
        ConfigWarning,
        RetryableError,
        RunqyError,
        TaskFailed,
        TaskTimeout,
        WorkerCrashed,
    )
    from runqy.worker import Worker, run, run_once

# Imported on first use (PEP 562): a child process of the process runner imports runqy
# again for every replacement it starts, and the settings machinery (pydantic-settings)
# alone would double the time before a replacement child serves.
_LAZY = {
    "Registry": "runqy.app",
    "load": "runqy.app",
    "task": "runqy.app",
    "RunqyBuilder": "runqy.builder",
    "TaskInfo": "runqy.context",
    "current_batch": "runqy.context",
    "current_task": "runqy.context",
    "ConfigError": "runqy.errors",
    "ConfigWarning": "runqy.errors",
    "RetryableError": "runqy.errors",
    "RunqyError": "runqy.errors",
    "TaskFailed": "runqy.errors",
    "TaskTimeout": "runqy.errors",
    "WorkerCrashed": "runqy.errors",
    "RunqySettings": "runqy.config.settings",
    "load_settings": "runqy.config.resolve",
    "Worker": "runqy.worker",
    "run": "runqy.worker",
    "run_once": "runqy.worker",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'runqy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ConfigError",
    "ConfigWarning",
    "Registry",
    "RetryableError",
    "RunqyBuilder",
    "RunqyError",
    "RunqySettings",
    "TaskFailed",
    "TaskInfo",
    "TaskTimeout",
    "Worker",
    "WorkerCrashed",
    "current_batch",
    "current_task",
    "load",
    "load_settings",
    "run",
    "run_once",
    "task",
]

__version__ = "0.1.0"
