"""Checks of whole configurations, run whenever settings are built, before any runner starts.

A field can be valid on its own and still make no sense next to the runner that was
chosen. Impossible combinations (a hard timeout asked of a runner that cannot kill a
task, a ``runner_cls`` that is not a Runner) raise :class:`ConfigError`; useless
ones (an option the chosen runner never reads) emit a :class:`ConfigWarning`
through the :mod:`warnings` module, so that an application can silence them or turn
them into errors with the usual warning filters.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from runqy.config.catalog import BUILTIN_RUNNERS, RUNNER_SPECIFIC_FIELDS, RunnerSpec, find_builtin, import_runner
from runqy.errors import ConfigError, ConfigWarning
from runqy.runners.base import Capabilities

if TYPE_CHECKING:
    from runqy.config.settings import RunqySettings

__all__ = [
    "DERIVED_FROM",
    "ResolvedRunner",
    "caller_stacklevel",
    "check_environment",
    "check_settings",
    "resolve_runner",
]

#: Fields that settings fill in from another one when no source sets them.
DERIVED_FROM = {"runner_cls": "python_workers", "runner.max_threads": "python_workers"}

#: ``RUNQY_*`` variables that are not settings but that runqy itself reads.
NON_SETTING_ENV_VARS = frozenset({"RUNQY_CONFIG", "RUNQY_CHILD_PROCESS"})

#: The packages whose frames stand between a warning and the code that built the settings.
_INTERNAL_PACKAGES = ("runqy.config", "pydantic", "pydantic_core", "pydantic_settings")

# A more useful fix than "remove it" for options that are often confused.
_HINTS = {
    ("runner.threads_per_process", "thread"): 'size the pool with runner.max_threads, or use runner_cls = "hybrid"',
    ("runner.max_threads", "hybrid"): "size each child's thread pool with runner.threads_per_process",
    ("max_abandoned_threads", "process"): "remove it: the process runner kills a timed-out task, no thread is left",
    ("spin_wait_us", "async"): "remove it: the async runner never polls, which would take the GIL from its event loop",
}


@dataclass(frozen=True)
class ResolvedRunner:
    """The runner a configuration chooses, known without importing built-in runner modules."""

    #: The alias of a built-in runner, or ``runner_cls`` as given for any other class.
    name: str
    #: ``"package.module:Class"``.
    path: str
    capabilities: Capabilities
    #: The catalog entry of a built-in runner; None for a user's own Runner subclass.
    spec: RunnerSpec | None
    #: True when ``runner_cls`` was given, False when ``python_workers`` or the default chose it.
    named: bool


def resolve_runner(runner_cls: str | None, python_workers: int | None) -> ResolvedRunner:
    """Which runner ``runner_cls`` / ``python_workers`` choose; imports only a user's own class."""
    named = runner_cls is not None
    if runner_cls is None:
        # runqy-python's meaning: N workers are N threads; one worker is the sequential loop.
        runner_cls = "thread" if (python_workers or 1) > 1 else "sequential"
    spec = find_builtin(runner_cls)
    if spec is not None:
        return ResolvedRunner(spec.alias, spec.path, spec.capabilities, spec, named)
    cls = import_runner(runner_cls)
    return ResolvedRunner(runner_cls, f"{cls.__module__}:{cls.__qualname__}", cls.capabilities, None, named)


def check_settings(settings: RunqySettings) -> dict[str, Any]:
    """Reject impossible combinations, warn about useless ones, and return the values to derive.

    The returned mapping holds dotted field names (see :data:`DERIVED_FROM`) and the
    values the settings take when no source set them.
    """
    runner = resolve_runner(settings.runner_cls, settings.python_workers)
    _check_hard_timeout(settings, runner)
    derived = _derive_from_workers(settings, runner)
    if runner.spec is not None:
        _warn_ignored_options(settings, runner.spec)
    if runner.name == "hybrid" and settings.runner.threads_per_process == 1:
        _warn(
            "runner.threads_per_process",
            "= 1 makes the hybrid runner a process runner without hard timeouts",
            'use runner_cls = "process", or more threads per process',
        )
    return derived


def _check_hard_timeout(settings: RunqySettings, runner: ResolvedRunner) -> None:
    if not settings.require_hard_timeout:
        return
    if not runner.capabilities.hard_timeout:
        raise ConfigError(
            f"require_hard_timeout = true, but the {runner.name!r} runner cannot stop a timed-out task: it "
            f'abandons the attempt and its thread keeps running; fix: use runner_cls = "process", whose '
            f"timeouts kill the task's process, or remove require_hard_timeout",
            fields=("require_hard_timeout", "runner_cls"),
        )
    if settings.task_timeout_s is None:
        _warn("require_hard_timeout", "= true has no effect without a timeout", "set task_timeout_s")


def _derive_from_workers(settings: RunqySettings, runner: ResolvedRunner) -> dict[str, Any]:
    workers = settings.python_workers
    derived: dict[str, Any] = {}
    if not runner.named and runner.name == "thread":
        derived["runner_cls"] = "thread"
    if workers is None or runner.spec is None:
        return derived  # a user's own runner reads python_workers itself if it wants to
    if runner.name == "thread" and settings.runner.max_threads is None:
        derived["runner.max_threads"] = workers
        return derived
    if workers <= 1:
        return derived  # one worker asks for nothing that any runner fails to do
    if runner.name == "thread" and settings.runner.max_threads != workers:
        _warn(
            "python_workers",
            f"= {workers} is ignored: runner.max_threads = {settings.runner.max_threads} sets the thread pool",
            "remove one of the two",
        )
    elif runner.name == "sequential":
        _warn(
            "python_workers",
            f"= {workers} is ignored: runner_cls = {settings.runner_cls!r} runs one task at a time",
            'remove runner_cls (or use runner_cls = "thread") for a pool of threads',
        )
    elif runner.name == "async":
        _warn(
            "python_workers",
            f"= {workers} is ignored by the async runner, which runs tasks as coroutines, not on threads",
            "set runner.max_concurrency instead",
        )
    elif runner.name in ("process", "hybrid"):
        # Each child loads the model again: its count is never guessed from a thread count.
        _warn(
            "python_workers",
            f"= {workers} is ignored by the {runner.name} runner, whose children each run @load",
            "set runner.num_processes"
            + (" and runner.threads_per_process" if runner.name == "hybrid" else "")
            + " instead",
        )
    return derived


def _warn_ignored_options(settings: RunqySettings, spec: RunnerSpec) -> None:
    for field in RUNNER_SPECIFIC_FIELDS:
        if field in spec.options or field == "require_hard_timeout" or not _differs_from_default(settings, field):
            continue  # a default value changes nothing, even when a file spells it out
        users = [alias for alias, other in BUILTIN_RUNNERS.items() if field in other.options]
        hint = _HINTS.get((field, spec.alias), f"remove it, or choose runner_cls = {users[0]!r}")
        _warn(field, f"is ignored by the {spec.alias} runner (it applies to: {', '.join(users)})", hint)


def _differs_from_default(settings: RunqySettings, dotted: str) -> bool:
    table, _, name = dotted.rpartition(".")
    owner = getattr(settings, table) if table else settings
    (spec,) = (spec for spec in fields(owner) if spec.name == name)
    return bool(getattr(owner, name) != spec.default)


def _warn(field: str, what: str, fix: str) -> None:
    warnings.warn(ConfigWarning(f"{field} {what}; fix: {fix}", fields=(field,)), stacklevel=caller_stacklevel())


def caller_stacklevel() -> int:
    """The stack level of the first frame outside runqy and pydantic: the code that built the settings.

    The warning then points at the user's ``run()`` or builder call rather than at
    the settings' construction or pydantic's validation machinery. Frames are told by
    their module's name, which the ``__init__`` that dataclasses generate shares with
    the class (its file name is no real file).
    """
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and _internal(frame.f_globals.get("__name__", "")):
        level, frame = level + 1, frame.f_back
    return level


def _internal(module: str) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in _INTERNAL_PACKAGES)


def check_environment(environ: Mapping[str, str], known: set[str]) -> None:
    """Warn about ``RUNQY_*`` variables that look like a misspelt setting.

    pydantic-settings ignores unknown top-level variables. They are not errors here
    either: the Go worker's own environment may hold other ``RUNQY_*`` names. Only
    a name close to a real one is reported, since that is almost always a typo.
    """
    for name in environ:
        upper = name.upper()
        if not upper.startswith("RUNQY_") or upper in NON_SETTING_ENV_VARS or "__" in upper:
            continue  # nested names (RUNQY_RUNNER__X) are validated by the settings model itself
        if upper.removeprefix("RUNQY_").lower() in known:
            continue
        import difflib  # only for a RUNQY_* name that is no setting

        close = difflib.get_close_matches(upper, [f"RUNQY_{field.upper()}" for field in known], n=1, cutoff=0.8)
        if close:
            warnings.warn(
                f"environment variable {name} is not a runqy setting and is ignored; did you mean {close[0]}?",
                ConfigWarning,
                stacklevel=caller_stacklevel(),
            )
