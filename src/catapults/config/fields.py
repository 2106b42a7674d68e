"""The base of every config section: strict fields (no lax coercion, no unknown keys, no
non-finite numbers), each error naming its field. No torch here."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

FLOAT32_MAX = 3.4028234663852886e38
MAX_SEED = 2**62
"""Largest seed accepted (torch's generators take 64-bit seeds; the trainer adds small offsets)."""
MAX_COUNT = 10**8
"""Largest sample count, width or step count a config may ask for (memory is checked too)."""


def _base_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType}; a Literal's
    values' types; containers as themselves)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in typing.get_args(annotation)))
    return {origin or annotation}


def _element_type(annotation: Any) -> Any:
    for a in (typing.get_args(annotation) or ()):
        if typing.get_origin(a) in (list, tuple):
            return typing.get_args(a)[0]
    if typing.get_origin(annotation) in (list, tuple):
        return typing.get_args(annotation)[0]
    return None


def _strict(value: Any, kinds: set[Any]) -> str | None:
    """Why ``value`` may not stand for a field of ``kinds`` (no lax coercion), or None."""
    if isinstance(value, bool):
        if bool in kinds:
            return None
        wanted = "a number" if kinds & {int, float} else "a string" if str in kinds else "a value"
        return f"expected {wanted}, got a boolean"
    if kinds <= {bool, type(None)} and value is not None:
        return f"expected true or false, got {type(value).__name__}"
    if isinstance(value, str) and int in kinds and float not in kinds and str not in kinds:
        return "expected an integer, got a string"
    if isinstance(value, float) and int in kinds and float not in kinds and value % 1:
        return "expected an integer"
    return None


class _Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and lax coercions (``true`` for a
    number, ``'yes'`` for a boolean, a string for an integer) are errors naming the field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name]
        kinds = _base_types(field.annotation)
        why = _strict(value, kinds)
        element = _element_type(field.annotation)
        if why is None and element is not None and isinstance(value, (list, tuple)):
            for v in value:
                why = _strict(v, _base_types(element))
                if why:
                    break
        if why:
            raise ValueError(why)
        return value
