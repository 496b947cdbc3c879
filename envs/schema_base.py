"""The strict pydantic base of every scenario section: unknown keys, infinities and YAML booleans in number
keys are errors (envs/scenario.py and envs/workload_schema.py build on it)."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator


def _annotation_types(ann: Any) -> set[Any]:
    """Every type an annotation names, through Annotated, unions, lists and dicts."""
    out = {ann}
    for arg in get_args(ann):
        out |= _annotation_types(arg)
    return out


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_bool(v) for v in value)
    return False


class _Strict(BaseModel):
    # allow_inf_nan=False: no key of a scenario means anything when infinite or NaN (an infinite price
    # makes the cost inf, an infinite pause or latency keeps requests in flight forever)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """YAML's ``true`` is not a number: pydantic would take it as 1 for an int or float key."""
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            f = cls.model_fields.get(key)
            if f is None or not _has_bool(value):
                continue
            types = _annotation_types(f.annotation)
            takes_models = any(isinstance(t, type) and issubclass(t, BaseModel) for t in types)
            numeric = int in types or float in types
            if numeric and bool not in types and not takes_models:
                raise ValueError(f"{key}: expected a number, got {value!r} (true/false is not a number)")
        return data
