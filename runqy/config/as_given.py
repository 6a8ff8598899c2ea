"""The settings' values checked without pydantic when validation would keep them as they are.

Importing pydantic takes longer than a runqy-python worker takes to start, and most
workers give nothing that needs it: the defaults, or ``run(workers=4)``. Telling so
takes a few comparisons against the fields' declarations (type and bounds).

The test is conservative and never rejects anything itself: a value it is not sure of
(text for a number, a bool for an int, a value out of bounds, an unknown table key)
goes through pydantic (:mod:`runqy.config.validation`), whose values and errors are
then the ones given. The one conversion made here is pydantic's own for an int given
for a float (``task_timeout_s=30`` becomes ``30.0``).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["as_validated", "validate_fields"]

_PLAIN = frozenset({int, float, bool, str, type(None)})
_UNIONS = (Union, types.UnionType)
# Beyond this an int is not exactly a float: pydantic decides.
_EXACT_FLOAT = 2**53
#: What _validated() returns for a value only pydantic can tell about.
_UNSURE: Any = object()


def validate_fields(instance: Any) -> None:
    """Give each field of the dataclass ``instance`` its validated value; pydantic's ValidationError when wrong.

    Run by the settings' ``__post_init__``: a field the check here cannot vouch for
    sends every value through pydantic.
    """
    values = {spec.name: getattr(instance, spec.name) for spec in fields(instance)}
    validated = as_validated(type(instance), values)
    if validated is None:
        from runqy.config.validation import validated_values

        validated = validated_values(type(instance), values)
    for name, value in validated.items():
        if value is not values[name]:
            # The settings are frozen for their users; validating them belongs to their construction.
            object.__setattr__(instance, name, value)


def as_validated(cls: type[Any], values: Mapping[str, Any]) -> dict[str, Any] | None:
    """``values`` (fields of the dataclass ``cls``) as pydantic's validation would make them; None when unsure."""
    declared = {spec.name: spec for spec in fields(cls)}
    validated: dict[str, Any] = {}
    for name, value in values.items():
        spec = declared.get(name)
        if spec is None:
            return None
        kept = _validated(spec.type, spec.metadata, value)
        if kept is _UNSURE:
            return None
        validated[name] = kept
    return validated


def _validated(annotation: Any, bounds: Mapping[str, Any], value: Any) -> Any:
    if is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value  # validated when it was built
        if isinstance(value, Mapping):
            table = as_validated(annotation, value)
            return _UNSURE if table is None else annotation(**table)
        return _UNSURE
    if get_origin(annotation) is Literal:
        # Literal["INFO", ...] accepts those very strings (of type str: no subclass, no enum).
        return value if type(value) is str and value in get_args(annotation) else _UNSURE
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        plain = type(value) is list and all(type(element) is item for element in value)
        return list(value) if plain else _UNSURE  # validation gives a list of its own
    allowed = set(get_args(annotation)) if get_origin(annotation) in _UNIONS else {annotation}
    if not allowed <= _PLAIN:
        return _UNSURE
    if type(value) is int and float in allowed and int not in allowed and abs(value) <= _EXACT_FLOAT:
        value = float(value)
    if type(value) not in allowed:
        return _UNSURE  # bool is no int here: validation would decide what it becomes
    if value is None or all(_within(kind, bound, value) for kind, bound in bounds.items()):
        return value
    return _UNSURE


def _within(kind: str, bound: Any, value: Any) -> bool:
    if kind == "ge":
        return bool(value >= bound)
    if kind == "gt":
        return bool(value > bound)
    if kind == "le":
        return bool(value <= bound)
    return False  # a bound not known here: pydantic decides
