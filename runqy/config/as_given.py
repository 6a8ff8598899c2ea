"""Values given in code that pydantic would keep exactly as given: settings made of them need no validator.

The first validation of the settings builds their validator, and building the first
validator of a process makes pydantic look for plugins through ``importlib.metadata``:
together more than the rest of a worker's start. A worker that sets nothing in code,
or only ``run(workers=4)``, gives values that validation would accept unchanged, and
telling so takes a few comparisons against the fields' own declarations.

The test is conservative and never rejects anything itself: a value it is not sure of
(text for a number, an int for a float, a list, a table, a field with a validator of
its own or an alias, a constraint it does not know, a model option such as
``str_strip_whitespace``) goes through pydantic, whose settings, errors
and warnings are then the ones given.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Literal, Union, get_args, get_origin

# pydantic's own dependency: the form in which FieldInfo.metadata holds Field(ge=..., gt=...).
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["kept_as_given"]

_PLAIN = frozenset({int, float, bool, str, type(None)})
#: Model options that change no value given as it is; any other one (``strict``, ``str_strip_whitespace``...) might.
_NEUTRAL_CONFIG = frozenset({"extra", "frozen", "validate_default", "defer_build", "title"})
_UNIONS = (Union, types.UnionType)


def kept_as_given(model: type[BaseModel], values: Mapping[str, object]) -> bool:
    """True when validating ``values`` as fields of ``model`` would accept each and change none."""
    validated = {
        field
        for decorator in model.__pydantic_decorators__.field_validators.values()
        for field in decorator.info.fields
    }
    if "*" in validated or not set(model.model_config) <= _NEUTRAL_CONFIG:
        return False
    for name, value in values.items():
        field = model.model_fields.get(name)
        if field is None or name in validated or field.alias is not None or not _kept(field, value):
            return False
    return True


def _kept(field: FieldInfo, value: object) -> bool:
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        # Literal["INFO", ...] accepts those very strings (of type str: no subclass, no enum).
        return type(value) is str and value in get_args(annotation)
    allowed = set(get_args(annotation)) if get_origin(annotation) in _UNIONS else {annotation}
    if not allowed <= _PLAIN or type(value) not in allowed:
        return False  # bool is no int here, and an int given for a float would become a float
    return value is None or all(_meets(constraint, value) for constraint in field.metadata)


def _meets(constraint: object, value: object) -> bool:
    # Only the bounds pydantic compares as they are; any other constraint sends the value to pydantic.
    if isinstance(constraint, Ge):
        return bool(value >= constraint.ge)  # type: ignore[operator]
    if isinstance(constraint, Gt):
        return bool(value > constraint.gt)  # type: ignore[operator]
    if isinstance(constraint, Le):
        return bool(value <= constraint.le)  # type: ignore[operator]
    if isinstance(constraint, Lt):
        return bool(value < constraint.lt)  # type: ignore[operator]
    return False
