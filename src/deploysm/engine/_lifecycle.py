"""Ending a machine: complete, fail, cancel."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._errors import StateMachineError
from . import _timers as timers
from ._saga import compensate_locked

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = [
    "cancel",
    "complete",
    "fail",
    "finish_cancel",
    "finish_complete",
    "finish_failure_state",
]


async def finish_complete(m: Machine[Any, Any, Any]) -> None:
    m.note("completed", state=m._state.name)
    m._put(step.finished(m._head, "completed"))
    timers.stop(m)
    hooks = m._def.hooks
    if hooks.on_complete is not None:
        await m._def.observer.call(
            "on_complete", hooks.on_complete, m._state, m._ctx, m.get_metrics()
        )


def finish_failure_state(
    m: Machine[Any, Any, Any], source: str, event: str, prior: dict[str, Any] | None
) -> None:
    """The machine entered one of its failure states: it is ``failed``. Its last error
    is the one its previous state recorded (why it gave up), else a note of the move.
    No ``on_complete`` (the workflow did not complete) and no ``on_error`` (nothing
    raised: the workflow chose this state)."""
    name = m._state.name
    error = prior or {
        "type": "StateMachineError",
        "code": None,
        "message": f"entered failure state {name!r} from {source!r} on {event}",
        "state": name,
    }
    m.note("machine_failed", **error)
    m._put(step.finished(m._head, "failed", error))
    timers.stop(m)


async def complete(m: Machine[Any, Any, Any]) -> None:
    async with m.lock():
        if m._status == "completed":
            return
        m.check_active()
        await finish_complete(m)
        await _persist_or_raise(m)


async def fail(m: Machine[Any, Any, Any], error: BaseException | str | None) -> None:
    err = error if isinstance(error, BaseException) else StateMachineError(str(error or "failed"))
    async with m.lock():
        if m._status == "failed":
            return
        m.check_active()
        record = m.error_record(err)
        m._put(step.finished(m._head, "failed", record))
        timers.stop(m)
        m.note("machine_failed", **record)
        await m.report_error(err)
        if m._def.compensate_on_failure:
            await compensate_locked(m)
        await _persist_or_raise(m)


async def cancel(m: Machine[Any, Any, Any]) -> None:
    if m._status == "cancelled":
        return
    m._cancel_requested = True
    owner = m._owner
    if owner is not None and owner is asyncio.current_task():
        return  # called from inside the running transition: it finishes the cancel itself
    if owner is not None and m._cancellable and not owner.done():
        owner.cancel()
    async with m.lock():
        error = await finish_cancel(m)
    if error is not None:  # not recorded: the machine is what its store holds
        raise error


async def finish_cancel(m: Machine[Any, Any, Any]) -> StateMachineError | None:
    """Record the cancellation: ``on_cancel``, then a durable write (its error, if it
    failed)."""
    if m._status == "cancelled":
        return None
    m.note("cancelled", state=m._state.name)
    m._put(step.finished(m._head, "cancelled"))
    timers.stop(m)
    hooks = m._def.hooks
    if hooks.on_cancel is not None:
        await m._def.observer.call("on_cancel", hooks.on_cancel, m._state, m._ctx)
    return await m.persist(bump=True)


async def _persist_or_raise(m: Machine[Any, Any, Any]) -> None:
    err = await m.persist(bump=True)
    if err is not None:
        raise err
