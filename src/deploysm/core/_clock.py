"""Clocks: where the machine reads the time and waits.

The running machine's clock is published in a context variable so effects can
use :func:`now` and :func:`sleep` and stay deterministic under a test clock.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "now", "sleep"]


@runtime_checkable
class Clock(Protocol):
    """What a machine needs from a clock: the time, and a way to wait."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class SystemClock:
    """Wall-clock time (aware UTC) and real ``asyncio.sleep``."""

    __slots__ = ()

    # ``datetime.now(UTC)`` itself, not a method that calls it: a machine reads the time
    # a few times per transition, and a partial is no descriptor, so no frame is added
    now: Callable[[], datetime] = partial(datetime.now, UTC)

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(max(0.0, seconds))

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


def sleep(seconds: float) -> Awaitable[None]:
    """Wait on the running machine's clock (virtual time under a test clock):
    ``await deploysm.sleep(seconds)``. (The clock's own coroutine is returned, not
    wrapped in another: thousands of machines waiting at once each hold one frame less.)"""
    return _current.get(SYSTEM_CLOCK).sleep(seconds)
