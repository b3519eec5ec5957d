"""JSON-safe encoding of user values (contexts, payloads, metadata) and back."""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

__all__ = ["decode_context", "jsonable"]


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe copy of ``value``; raise ``TypeError`` for what JSON cannot hold."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cannot store the float {value!r} in JSON")
        return value
    if _depth > 200:
        raise TypeError("value nests too deeply (a reference cycle?)")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"mapping keys must be strings to be stored, got {k!r}")
            out[k] = jsonable(v, _depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value)
        }
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"cannot store a {type(value).__name__} in a snapshot")


def decode_context(data: Any, like: Any) -> Any:
    """Rebuild a context of the same type as ``like`` (dict, dataclass or pydantic model)."""
    cls = type(like)
    validate = getattr(cls, "model_validate", None)
    if callable(validate):
        return validate(data)
    if dataclasses.is_dataclass(like) and not isinstance(like, type):
        if not isinstance(data, Mapping):
            raise TypeError(f"context for {cls.__name__} must be an object")
        return _build_dataclass(cls, data)
    if isinstance(like, dict):
        if not isinstance(data, Mapping):
            raise TypeError("context must be an object")
        return cls(data) if cls is not dict else dict(data)
    return data


def _build_dataclass(cls: Any, data: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: nested dataclasses stay mappings
        hints = {}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise TypeError(f"unknown field(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        value = data[name]
        hint = hints.get(name, f.type)
        ftype = hint if isinstance(hint, type) else None
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, Mapping):
            value = _build_dataclass(ftype, value)
        kwargs[name] = value
    return cls(**kwargs)
