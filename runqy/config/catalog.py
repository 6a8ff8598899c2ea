"""The built-in runners as settings see them: alias, class path, capabilities and the options each honours.

Settings are validated against this table without importing the runner modules, so
a configuration is checked the same way whether or not a runner's module is
installed, and before any runner starts. The capabilities written here must equal
the ``capabilities`` each runner class declares; a test compares them whenever the
class can be imported.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from runqy.errors import ConfigError
from runqy.runners.base import Capabilities, Runner

__all__ = [
    "BUILTIN_RUNNERS",
    "RUNNER_SPECIFIC_FIELDS",
    "RunnerSpec",
    "find_builtin",
    "import_runner",
    "valid_runner_names",
]


@dataclass(frozen=True)
class RunnerSpec:
    """One built-in runner: what ``runner_cls`` may call it and what it can honour."""

    alias: str
    #: ``"package.module:Class"``.
    path: str
    capabilities: Capabilities
    #: The runner-specific settings (see RUNNER_SPECIFIC_FIELDS) this runner reads.
    options: frozenset[str]

    @property
    def class_name(self) -> str:
        return self.path.rpartition(":")[2]


#: Settings that only some runners read; any other setting applies to every runner.
RUNNER_SPECIFIC_FIELDS = (
    "require_hard_timeout",
    "max_tasks_per_child",
    "max_memory_per_child_mb",
    "max_abandoned_threads",
    "spin_wait_us",
    "runner.max_threads",
    "runner.num_processes",
    "runner.threads_per_process",
    "runner.start_method",
    "runner.max_concurrency",
)

_CHILDREN = frozenset({"runner.num_processes", "runner.start_method", "max_tasks_per_child", "max_memory_per_child_mb"})

BUILTIN_RUNNERS: dict[str, RunnerSpec] = {
    spec.alias: spec
    for spec in (
        RunnerSpec(
            "sequential",
            "runqy.runners.sequential:SequentialRunner",
            Capabilities(hard_timeout=False, shares_load_context=True, cpu_parallel=False),
            frozenset({"max_abandoned_threads", "spin_wait_us"}),
        ),
        RunnerSpec(
            "thread",
            "runqy.runners.thread:ThreadRunner",
            Capabilities(hard_timeout=False, shares_load_context=True, cpu_parallel=False),
            frozenset({"max_abandoned_threads", "runner.max_threads", "spin_wait_us"}),
        ),
        RunnerSpec(
            "process",
            "runqy.runners.process:PersistentProcessRunner",
            Capabilities(hard_timeout=True, shares_load_context=False, cpu_parallel=True),
            _CHILDREN | {"require_hard_timeout", "spin_wait_us"},
        ),
        RunnerSpec(
            "hybrid",
            "runqy.runners.hybrid:HybridRunner",
            # Its threads run in-process inside each child: a timed-out one is abandoned, not killed.
            Capabilities(hard_timeout=False, shares_load_context=False, cpu_parallel=True),
            _CHILDREN | {"runner.threads_per_process", "max_abandoned_threads", "spin_wait_us"},
        ),
        RunnerSpec(
            "async",
            "runqy.runners.eventloop:AsyncRunner",
            # Cancelling a coroutine stops it at its next await; one that never awaits cannot be stopped.
            Capabilities(hard_timeout=False, shares_load_context=True, cpu_parallel=False),
            frozenset({"runner.max_concurrency"}),
        ),
    )
}
_FIELD = ("runner_cls",)
_BY_CLASS_NAME = {spec.class_name: spec for spec in BUILTIN_RUNNERS.values()}


def find_builtin(name: str) -> RunnerSpec | None:
    """The built-in runner ``name`` stands for (an alias in any case, or its class name), if any."""
    return BUILTIN_RUNNERS.get(name.lower()) or _BY_CLASS_NAME.get(name)


def valid_runner_names() -> str:
    """The accepted spellings of ``runner_cls``, for error messages."""
    return ", ".join([*BUILTIN_RUNNERS, *_BY_CLASS_NAME]) + ', or "package.module:Class"'


def import_runner(name: str) -> type[Runner]:
    """Import the Runner subclass ``runner_cls`` names; a :class:`ConfigError` says why it cannot."""
    spec = find_builtin(name)
    path = spec.path if spec is not None else name
    module_name, _, class_name = path.partition(":")
    if not class_name or not module_name:
        raise ConfigError(f"runner_cls: unknown runner {name!r}; expected one of {valid_runner_names()}", fields=_FIELD)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if spec is not None and exc.name == module_name:
            raise ConfigError(
                f"runner_cls: the {spec.alias!r} runner is not available yet in this version of runqy; "
                f"choose another runner_cls",
                fields=_FIELD,
            ) from exc
        raise ConfigError(
            f"runner_cls: cannot import module {module_name!r} for {name!r}: {exc}", fields=_FIELD
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        got = "nothing" if cls is None else repr(cls)
        raise ConfigError(
            f"runner_cls: {name!r} is {got}, not a runqy Runner subclass; "
            f"expected one of {valid_runner_names()} (a class deriving from runqy.runners.base.Runner)",
            fields=_FIELD,
        )
    if inspect.isabstract(cls):
        raise ConfigError(f"runner_cls: {name!r} is abstract; name a concrete Runner subclass", fields=_FIELD)
    if getattr(cls, "capabilities", None) is None:
        raise ConfigError(
            f"runner_cls: {name!r} declares no capabilities; set capabilities = Capabilities(...)", fields=_FIELD
        )
    return cls
