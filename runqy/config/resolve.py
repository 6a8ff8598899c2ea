"""Settings resolved from every source and checked, each error and warning naming where its value came from.

:mod:`runqy.config.settings` defines the model and :mod:`runqy.config.sources` its
sources; this module builds it from them (``resolve_settings``, ``load_settings``) and,
through :mod:`runqy.config.provenance`, says which source set each field when a value
is wrong or ignored, and for ``runqy config``.

When no source outside the code has anything to say (:mod:`runqy.config.presence`),
the settings are built from the defaults and the code's values alone, and
pydantic-settings is not imported; values that validation would keep as they are
(:mod:`runqy.config.as_given`) do not even import pydantic. Should that fail or warn,
the full resolution runs instead and reports it, so errors and warnings are the same
either way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from runqy.config.checks import caller_stacklevel, check_environment, resolve_runner
from runqy.config.presence import outside_sources
from runqy.config.settings import RunqySettings
from runqy.errors import ConfigError, ConfigWarning

__all__ = ["describe_settings", "load_settings", "resolve_settings"]


def resolve_settings(overrides: Mapping[str, Any] | None = None, *, code_origin: str = "code") -> RunqySettings:
    """Build and check settings from every source, without importing the runner.

    ``overrides`` are the values given in code (nested as ``{"runner": {...}}``);
    they win over every other source. Raises :class:`ConfigError` naming each bad
    field and the source (file, environment variable or code) it came from.
    """
    overrides = dict(overrides or {})
    names = {spec.name for spec in fields(RunqySettings)}
    check_environment(os.environ, names)
    if not outside_sources(names):
        settings = _from_code_alone(overrides)
        if settings is not None:
            return settings
    return _from_every_source(overrides, code_origin)


def _from_code_alone(overrides: dict[str, Any]) -> RunqySettings | None:
    """The settings when nothing outside the code sets any: the defaults and ``overrides``.

    None when they are invalid or warned about: only the full resolution knows the
    source of each value, which its messages name.
    """
    settings: RunqySettings | None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            settings = RunqySettings(**overrides)
        except (TypeError, ValueError):  # a key that is no setting, pydantic's ValidationError, a ConfigError
            settings = None
    for record in caught:
        if issubclass(record.category, ConfigWarning):
            settings = None  # issued by the full resolution, with the source of each field
        else:  # another library's warning, raised once while validating: passed on as it was
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    return settings


def _from_every_source(overrides: dict[str, Any], code_origin: str) -> RunqySettings:
    from pydantic import ValidationError

    from runqy.config.provenance import describe_errors
    from runqy.config.sources import values_from_sources

    # Held back and issued again below with the source of each field, which only this level knows.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            values = values_from_sources(overrides)
        except ValidationError as exc:
            message, names = describe_errors(exc, overrides, code_origin=code_origin)
            raise ConfigError(message, fields=names) from exc
        try:
            settings = RunqySettings(**values)
        except ConfigError as exc:  # a whole-configuration check (runqy.config.checks)
            message, names = describe_errors(exc, overrides, code_origin=code_origin)
            raise ConfigError(message, fields=names) from exc
    _issue_again(caught, overrides, code_origin)
    return settings


def _issue_again(caught: list[warnings.WarningMessage], overrides: dict[str, Any], code_origin: str) -> None:
    if not caught:
        return
    from runqy.config.provenance import describe_origin, origin_of, source_layers

    layers = source_layers(overrides, code_origin=code_origin)
    for record in caught:
        warning = record.message
        if not isinstance(warning, ConfigWarning):
            warnings.warn_explicit(warning, record.category, record.filename, record.lineno)
            continue
        where = "; ".join(f"{f} from {describe_origin(origin_of(f, layers) or 'default')}" for f in warning.fields)
        text = f"{warning} ({where})" if where else str(warning)
        warnings.warn(ConfigWarning(text, fields=warning.fields), stacklevel=caller_stacklevel())


def load_settings(**overrides: Any) -> RunqySettings:
    """Resolve settings from every source and check that their runner can be imported.

    Raises :class:`ConfigError` naming each bad field and its source.
    """
    settings = resolve_settings(overrides)
    settings.runner_class()  # a runner missing from this installation fails here, before anything starts
    return settings


def describe_settings(overrides: Mapping[str, Any] | None = None, *, code_origin: str = "code") -> dict[str, Any]:
    """The resolved settings, the origin of each, the runner they choose and any warnings, as JSON-ready data.

    This is what ``runqy config --json`` prints. It does not need the runner's module:
    ``runner.available`` says whether it can be imported here.
    """
    from runqy.config.provenance import origins, source_layers

    overrides = dict(overrides or {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        settings = resolve_settings(overrides, code_origin=code_origin)
    runner = resolve_runner(settings.runner_cls, settings.python_workers)
    try:
        settings.runner_class()
        available, unavailable_reason = True, None
    except ConfigError as exc:
        available, unavailable_reason = False, str(exc)
    return {
        "settings": asdict(settings),
        "sources": origins(settings, source_layers(overrides, code_origin=code_origin)),
        "runner": {
            "name": runner.name,
            "class": runner.path,
            "available": available,
            "unavailable_reason": unavailable_reason,
            "capabilities": {
                "hard_timeout": runner.capabilities.hard_timeout,
                "shares_load_context": runner.capabilities.shares_load_context,
                "cpu_parallel": runner.capabilities.cpu_parallel,
            },
        },
        "warnings": [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)],
    }
