"""Effects: the side effects a transition runs, built with a fluent builder."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from ._types import EffectResult, State

__all__ = ["Effect", "EffectBuilder", "effect"]

C = TypeVar("C")

EffectReturn = EffectResult | Mapping[str, Any] | None
ExecuteFn = Callable[[C, State[Any]], EffectReturn | Awaitable[EffectReturn]]
RollbackFn = Callable[[C, State[Any]], Any]
ReconcileOutcome = Literal["done", "not_done", "unknown"]
ReconcileFn = Callable[[C, State[Any]], Any]

_RESULT_KEYS = frozenset({"success", "message", "metadata", "can_retry", "canRetry"})


@dataclass(frozen=True, slots=True)
class Effect(Generic[C]):
    """A built effect. ``idempotent`` effects are simply run again on retry; others
    are rolled back before a retry, and are not retried without a rollback."""

    execute: ExecuteFn[C]
    rollback: RollbackFn[C] | None = None
    idempotent: bool = False
    reconcile: ReconcileFn[C] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return getattr(self.execute, "__qualname__", None) or repr(self.execute)


class EffectBuilder(Generic[C]):
    """``effect().execute(fn).rollback(fn).set_idempotent(True).build()``."""

    __slots__ = ("_execute", "_idempotent", "_name", "_reconcile", "_rollback")

    def __init__(self) -> None:
        self._execute: ExecuteFn[C] | None = None
        self._rollback: RollbackFn[C] | None = None
        self._reconcile: ReconcileFn[C] | None = None
        self._idempotent = False
        self._name: str | None = None

    def execute(self, fn: ExecuteFn[C]) -> EffectBuilder[C]:
        self._execute = _check_callable(fn, "execute")
        return self

    def rollback(self, fn: RollbackFn[C]) -> EffectBuilder[C]:
        self._rollback = _check_callable(fn, "rollback")
        return self

    def reconcile(self, fn: ReconcileFn[C]) -> EffectBuilder[C]:
        """After a crash, asked whether the in-flight attempt took effect:
        ``"done"``, ``"not_done"`` or ``"unknown"``."""
        self._reconcile = _check_callable(fn, "reconcile")
        return self

    def set_idempotent(self, idempotent: bool = True) -> EffectBuilder[C]:
        self._idempotent = bool(idempotent)
        return self

    def named(self, name: str) -> EffectBuilder[C]:
        self._name = name
        return self

    def build(self) -> Effect[C]:
        if self._execute is None:
            raise TypeError("effect().build() needs .execute(fn) first")
        return Effect(
            execute=self._execute,
            rollback=self._rollback,
            idempotent=self._idempotent,
            reconcile=self._reconcile,
            name=self._name,
        )


def effect() -> EffectBuilder[Any]:
    """Start building an effect (use ``EffectBuilder[MyContext]()`` for a typed one)."""
    return EffectBuilder()


def _check_callable(fn: Any, what: str) -> Any:
    if not callable(fn):
        raise TypeError(f"effect {what} must be callable, got {type(fn).__name__}")
    return fn


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async callable and return its (awaited) result."""
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


def to_effect_result(value: Any) -> EffectResult:
    """Normalise what an effect returned: an ``EffectResult``, a dict of its keys, or ``None``."""
    if value is None:
        return _SUCCESS
    if isinstance(value, EffectResult):
        return value
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _RESULT_KEYS]
        if unknown or "success" not in value:
            raise TypeError(
                "an effect's dict result needs 'success' and only the keys "
                f"success/message/metadata/can_retry, got {sorted(map(str, value))}"
            )
        return EffectResult(
            success=bool(value["success"]),
            message=value.get("message"),
            metadata=value.get("metadata"),
            can_retry=value.get("can_retry", value.get("canRetry")),
        )
    if isinstance(value, bool):
        return EffectResult(success=value)
    raise TypeError(
        f"an effect must return EffectResult, a dict or None, not {type(value).__name__}"
    )


_SUCCESS = EffectResult(success=True)
