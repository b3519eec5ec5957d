"""Compensation (the saga pattern): undo committed non-idempotent effects, newest first."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._effects import call_maybe_async
from ..core._errors import ErrorCode, StateMachineError
from ..core._head import count
from ..core._types import State
from ..durable._snapshot import committed_record
from ._timeouts import uninterrupted

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["CompensationResult", "compensate_locked"]


@dataclass(frozen=True, slots=True)
class CompensationResult:
    """Which committed effects were undone (state names, newest first) and which failed."""

    success: bool
    compensated: list[str] = field(default_factory=list)
    failed: list[tuple[str, BaseException]] = field(default_factory=list)


async def compensate_locked(m: Machine[Any, Any, Any]) -> CompensationResult:
    """Roll back every committed non-idempotent effect in reverse order. Each undone
    effect leaves the list at once and is persisted, so a second call never undoes
    it twice. A failing rollback stays in the list and parks the machine."""
    d = m._def
    obs = d.observer
    done: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    for record in step.to_compensate(m._committed, d.effect_by_index):
        eff = d.effect_by_index[record.transition_index]
        assert eff is not None and eff.rollback is not None
        target = State(
            record.state,
            {"compensating": True},
            d.clock.now(),
            m._version,
            0,
            record.idempotency_key,
        )
        try:
            await uninterrupted(call_maybe_async(eff.rollback, m._ctx, target))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = StateMachineError(
                f"compensation of {record.state!r} failed: {type(e).__name__}: {obs.error_text(e)}",
                ErrorCode.ROLLBACK_FAILED,
                state=m._state.name,
            )
            err.__cause__ = e
            failed.append((record.state, err))
            m.note("compensation_failed", state=record.state, key=record.idempotency_key)
            await m.report_error(err)
            break
        m._put(step.uncommitted(m._head, record))
        m.note("compensated", state=record.state, key=record.idempotency_key)
        count(m._head, compensations=1, rollbacks=1)
        if obs.enabled("info"):
            await obs.log(
                "info",
                f"compensated {record.state} (entered from {record.from_state} on {record.event})",
                {"machine_id": m.machine_id, "idempotency_key": record.idempotency_key},
            )
        persist_error = await m.persist(bump=True)
        if persist_error is not None:  # not recorded: the store still lists the effect
            return CompensationResult(False, done, [(record.state, persist_error)])
        done.append(record.state)
    if failed:
        m._put(step.finished(m._head, "needs_attention"))
        await m.persist(bump=True)
    elif d.compensated_state is not None and m._state.name != d.compensated_state:
        await _enter_compensated(m, d.compensated_state)
    return CompensationResult(not failed, done, failed)


async def _enter_compensated(m: Machine[Any, Any, Any], name: str) -> None:
    d = m._def
    hooks = d.hooks
    obs = d.observer
    a = m._state
    if hooks.on_state_exit is not None:
        await obs.call("on_state_exit", hooks.on_state_exit, a, m._ctx)
    now = d.clock.now()
    visit = step.leave(m._head, now)
    if hooks.on_metric is not None:
        await obs.call("on_metric", hooks.on_metric, dataclasses.replace(visit))
    head = m._head
    b = State(name, {"compensated": True}, now, head.version + 1)
    head, entered = step.enter(head, b, now, 0, 0, limit=d.history_limit, settles=False)
    m._put(head)
    m.note("committed", **committed_record(a, name, None, 0, None))
    if hooks.on_state_enter is not None:
        await obs.call("on_state_enter", hooks.on_state_enter, m._state, m._ctx)
    if hooks.on_metric is not None:
        await obs.call("on_metric", hooks.on_metric, dataclasses.replace(entered))
    await m.persist()
