"""Cheap construction of frozen, slotted dataclasses on the engine's hot path.

A frozen dataclass's ``__init__`` assigns each field through
``object.__setattr__``, about three times the cost of plain attribute stores. Each
transition builds several (its event, the state the effect sees, the new state, the
result), so the engine builds them through a mutable twin class with the same slots
and then gives the object its real class: the result is an ordinary instance of the
frozen class (equal, hashable, immutable), built at a third of the cost.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["maker"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """A callable taking every field of ``cls`` positionally, in declaration order
    (``init=False`` fields included, no defaults, no ``__post_init__``), returning an
    instance of ``cls``."""
    slots = getattr(cls, "__slots__", None)
    if not dataclasses.is_dataclass(cls) or slots is None:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    names = [f.name for f in dataclasses.fields(cls)]
    body = "".join(f"    self.{n} = {n}\n" for n in names)
    namespace: dict[str, Any] = {"cls": cls}
    exec(  # fixed source, built from the dataclass's own field names
        f"def __init__(self, {', '.join(names)}):\n{body}    self.__class__ = cls\n",
        namespace,
    )
    bases = getattr(cls, "__orig_bases__", cls.__bases__)  # Generic[...] as ``cls`` has it
    twin = types.new_class(
        f"_{cls.__name__}Builder", bases, exec_body=lambda ns: ns.update(__slots__=tuple(slots))
    )
    twin.__init__ = namespace["__init__"]  # type: ignore[misc]
    # A twin of another layout would fail here, at import, not at the first transition.
    twin(*([None] * len(names)))
    return twin
