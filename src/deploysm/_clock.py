"""Clocks: where the machine reads the time and waits.

The running machine's clock is published in a context variable so effects can
use :func:`now` and :func:`sleep` and stay deterministic under a test clock.
"""

from __future__ import annotations

import asyncio
import contextvars
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "now", "sleep"]


@runtime_checkable
class Clock(Protocol):
    """What a machine needs from a clock: the time, and a way to wait."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time (aware UTC) and real ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

_current: contextvars.ContextVar[Clock] = contextvars.ContextVar("deploysm_clock")


def current_clock() -> Clock:
    """The clock of the machine running in this context (the system clock outside one)."""
    return _current.get(SYSTEM_CLOCK)


def use_clock(clock: Clock) -> contextvars.Token[Clock]:
    return _current.set(clock)


def reset_clock(token: contextvars.Token[Clock]) -> None:
    _current.reset(token)


def now() -> datetime:
    """The running machine's time: an aware UTC ``datetime``."""
    return _current.get(SYSTEM_CLOCK).now()


async def sleep(seconds: float) -> None:
    """Wait on the running machine's clock (virtual time under a test clock)."""
    await _current.get(SYSTEM_CLOCK).sleep(seconds)
