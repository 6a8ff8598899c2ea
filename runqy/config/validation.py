"""pydantic models made from the settings' dataclasses: how values are validated and sources are read.

:mod:`runqy.config.settings` declares each field once (type, default, bounds); this
module turns a declaration into the pydantic model that validates it, on a base model
of the caller's choice: :class:`pydantic.BaseModel` to validate values given in code,
pydantic-settings' ``BaseSettings`` to read them from the environment and TOML files
(:mod:`runqy.config.sources`). Imported only when a value needs pydantic's validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = ["Validating", "from_model", "model_of", "validated_values"]

ModelT = TypeVar("ModelT", bound=BaseModel)


class Validating(BaseModel):
    """The base of the models that validate values given in code: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


@cache
def model_of(settings_cls: type, base: type[ModelT]) -> type[ModelT]:
    """The pydantic model of the settings dataclass ``settings_cls``, built on ``base`` (once per pair).

    A field whose type is itself a settings dataclass (the ``runner`` table) becomes a
    nested model on :class:`Validating`: a nested table is never a settings source.
    """
    definitions: dict[str, Any] = {}
    for spec in fields(settings_cls):
        annotation: Any = spec.type
        if isinstance(annotation, type) and is_dataclass(annotation):
            annotation = model_of(annotation, Validating)
        if spec.default_factory is not MISSING:
            factory = spec.default_factory
            default = Field(default_factory=lambda factory=factory: _as_input(factory()))
        else:
            default = Field(default=spec.default)
        definitions[spec.name] = (Annotated[annotation, Field(**spec.metadata)], default)
    return create_model(settings_cls.__name__, __base__=base, __module__=__name__, **definitions)


def validated_values(settings_cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` of the dataclass ``settings_cls``, validated by its model; raises pydantic's ValidationError."""
    model = model_of(settings_cls, Validating)(**{name: _as_input(value) for name, value in values.items()})
    return from_model(settings_cls, model)


def from_model(settings_cls: type, model: BaseModel) -> dict[str, Any]:
    """The field values of a validated ``model``, nested models turned into their settings dataclasses."""
    values: dict[str, Any] = {}
    for spec in fields(settings_cls):
        value = getattr(model, spec.name)
        if isinstance(spec.type, type) and is_dataclass(spec.type):
            value = spec.type(**from_model(spec.type, value))
        values[spec.name] = value
    return values


def _as_input(value: Any) -> Any:
    # A nested settings dataclass is given to its model as the table it stands for.
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
