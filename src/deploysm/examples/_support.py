"""Small helpers shared by the examples."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar, Union, cast

__all__ = ["MaybeAwaitable", "Progress", "log_progress", "resolve"]

T = TypeVar("T")

MaybeAwaitable: TypeAlias = Union[T, Awaitable[T]]  # noqa: UP007

Progress = Callable[[str, str], object]
"""``progress(kind, message)``: a human-readable line from inside an effect.

``kind`` says what it is about: ``"attempt"``, ``"traffic"``, ``"health"``,
``"metrics"``, ``"rollback"``, ``"teardown"`` or ``"step"``. The default logs it (logger
``deploysm.examples``, level INFO); the demo prints it.
"""

logger = logging.getLogger("deploysm.examples")


def log_progress(kind: str, message: str) -> None:
    logger.info("%s: %s", kind, message)


async def resolve(value: MaybeAwaitable[T]) -> T:
    """The value itself, or its awaited result when the callback was async."""
    if inspect.isawaitable(value):
        return cast(T, await value)
    return value
