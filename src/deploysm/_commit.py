"""Committing a transition: the only place a machine's state changes on success."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import _lifecycle as lifecycle
from . import _timers as timers
from ._definition import CompiledTransition
from ._snapshot import CommittedEffect
from ._types import EffectResult, Event, State, StateMetrics, TransitionResult

if TYPE_CHECKING:
    from ._engine import StateMachine

__all__ = ["commit"]


async def commit(
    m: StateMachine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    result: EffectResult | None,
    attempts: int,
    errors: int,
    key: str | None,
) -> TransitionResult[Any]:
    """Enter ``ct.to``: exit hook, new state, transition and enter hooks, durable write."""
    d = m._def
    hooks = d.hooks
    obs = d.observer
    ctx = m._ctx
    a = m._state
    if hooks.on_state_exit is not None:
        await obs.call("on_state_exit", hooks.on_state_exit, a, ctx)
    now = d.clock.now()
    visit = m._metrics.states[-1]
    visit.exited_at = now
    visit.duration_ms = (now - visit.entered_at).total_seconds() * 1000.0
    if hooks.on_metric is not None:
        await obs.call("on_metric", hooks.on_metric, dataclasses.replace(visit))
    m._history.append(a)
    data: dict[str, Any] = {"event": ev.type}
    if ev.payload is not None:
        data["payload"] = ev.payload
    if result is not None:
        if result.message is not None:
            data["message"] = result.message
        if result.metadata is not None:
            data["metadata"] = dict(result.metadata)
    m._version += 1
    b: State[Any] = State(ct.to, data, now, m._version, attempts, key)
    m._state = b
    new_visit = StateMetrics(ct.to, now, None, None, attempts, errors)
    metrics = m._metrics
    metrics.states.append(new_visit)
    metrics.total_transitions += 1
    metrics.current_state = ct.to
    eff = ct.effect
    if eff is not None and not eff.idempotent and eff.rollback is not None and key is not None:
        m._committed.append(CommittedEffect(ct.to, ct.source, ev.type, ct.index, key, m._version))
    m._in_flight = None
    m._last_error = None
    if hooks.on_transition is not None:
        await obs.call("on_transition", hooks.on_transition, a, b, ev, ctx)
    if hooks.on_state_enter is not None:
        await obs.call("on_state_enter", hooks.on_state_enter, b, ctx)
    if hooks.on_metric is not None:
        await obs.call("on_metric", hooks.on_metric, dataclasses.replace(new_visit))
    if obs.enabled("info"):
        await obs.log(
            "info",
            f"{a.name} -> {b.name} on {ev.type}",
            {"machine_id": m._machine_id, "version": m._version, "attempts": attempts},
        )
    if m._store is not None:
        m.note("committed", source=a.name, to=b.name, event=ev.type, attempts=attempts, key=key)
    if ct.to in d.finals:
        await lifecycle.finish_complete(m)
    elif d.state_timeout_s is not None:
        timers.arm(m)
    error = await m.persist()
    if error is not None:
        return TransitionResult(False, b, error, result)
    return TransitionResult(True, b, None, result)
