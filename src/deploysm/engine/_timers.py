"""State timeouts: how long a non-final state may wait for its next event."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._clock import reset_clock, use_clock
from ..core._errors import TimeoutError
from ..core._types import Event, State

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["arm", "stop"]


def arm(m: Machine[Any, Any, Any], deadline: datetime | None = None) -> None:
    """(Re)start the state timer; without a running loop only the deadline is kept,
    and the next ``dispatch`` starts the timer."""
    stop(m)
    seconds = m._def.state_timeout_s
    assert seconds is not None
    if deadline is None:
        deadline = m._def.clock.now() + timedelta(seconds=seconds)
    m._put(step.with_deadline(m._head, deadline))
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    m._state_timer = loop.create_task(_expire(m, m._state, deadline))


def stop(m: Machine[Any, Any, Any]) -> None:
    timer = m._state_timer
    if m._head.state_deadline is not None:
        m._put(step.with_deadline(m._head, None))
    if timer is not None:
        m._state_timer = None
        if timer is not asyncio.current_task():
            timer.cancel()


async def _expire(m: Machine[Any, Any, Any], state: State[Any], deadline: datetime) -> None:
    d = m._def
    clock = d.clock
    await clock.sleep(max(0.0, (deadline - clock.now()).total_seconds()))
    token = use_clock(clock)
    try:
        async with m.lock():
            if not step.timer_fires(m._head, state):
                return
            m._state_timer = None
            m._put(step.with_deadline(m._head, None))
            ms = (d.state_timeout_s or 0.0) * 1000.0
            err = TimeoutError(
                f"state {state.name!r} waited more than {ms:g} ms for an event", state=state.name
            )
            await m.report_error(err)
        if d.timeout_event is not None:
            await m.dispatch(Event(d.timeout_event, None, clock.now()))
    finally:
        reset_clock(token)
