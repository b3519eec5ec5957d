"""Deadlines on the machine's clock, and sections that cancellation must not cut."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

from ..core._clock import Clock, SystemClock

__all__ = ["ClockTimeout", "deadline", "uninterrupted"]

T = TypeVar("T")


class ClockTimeout:
    """Like ``asyncio.timeout`` but measured on any :class:`Clock` (virtual time too).

    On expiry the body is cancelled and ``builtins.TimeoutError`` is raised.
    """

    __slots__ = ("_clock", "_expired", "_seconds", "_task", "_timer")

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._expired = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.Task[None] | None = None

    def expired(self) -> bool:
        return self._expired

    async def _fire(self) -> None:
        await self._clock.sleep(self._seconds)
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> ClockTimeout:
        self._task = asyncio.current_task()
        if self._task is None:  # pragma: no cover - always inside a task under asyncio
            raise RuntimeError("ClockTimeout must be used inside a task")
        self._timer = asyncio.get_running_loop().create_task(self._fire())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        if self._expired:
            assert self._task is not None
            if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def deadline(clock: Clock, seconds: float) -> Any:
    """A timeout context manager on ``clock`` (``asyncio.timeout`` for the system clock)."""
    if type(clock) is SystemClock:
        return asyncio.timeout(seconds)
    return ClockTimeout(clock, seconds)


async def uninterrupted(aw: Awaitable[T]) -> T:
    """Run ``aw`` to its end even if this task is cancelled meanwhile; the
    cancellation is delivered afterwards. For rollbacks and durable writes."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
