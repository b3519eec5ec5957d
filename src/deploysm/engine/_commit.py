"""Committing a transition: the only place a machine's state changes on success."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._definition import CompiledTransition
from ..core._head import advance
from ..core._types import (
    EffectResult,
    Event,
    State,
    StateMetrics,
    TransitionResult,
    make_result,
    make_state,
)
from ..durable._snapshot import CommittedEffect, committed_record
from . import _lifecycle as lifecycle
from . import _timers as timers

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["commit", "commit_now"]


async def commit(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    result: EffectResult | None,
    attempts: int,
    errors: int,
    key: str | None,
) -> TransitionResult[Any]:
    """Enter ``ct.to``: exit hook, new state, transition and enter hooks, durable write."""
    d = m._def
    a = m._head.state
    hooked = d.commit_hooks
    if hooked:
        await _exit_hooks(m, a)
    now = d.clock.now()
    if hooked:
        visit = step.leave(m._head, now)
        if d.hooks.on_metric is not None:
            await d.observer.call("on_metric", d.hooks.on_metric, dataclasses.replace(visit))
    b, new_visit, prior_error = _enter(m, ct, ev, result, attempts, errors, key, now, hooked)
    version = b.version
    if hooked:
        await _enter_hooks(m, a, b, ev, new_visit)
    obs = d.observer
    if obs.enabled("info"):
        await obs.log(
            "info",
            f"{a.name} -> {b.name} on {ev.type}",
            {"machine_id": m.machine_id, "version": version, "attempts": attempts},
        )
    store = m._store
    if store is not None:
        m.note("committed", **committed_record(a, b.name, ev.type, attempts, key))
    if ct.to in d.finals:
        if ct.to in d.failures:
            lifecycle.finish_failure_state(m, a.name, ev.type, prior_error)
        else:
            await lifecycle.finish_complete(m)
    elif d.state_timeout_s is not None:
        timers.arm(m)
    if store is not None or d.persist_state is not None:
        error = await m.persist()
        if error is not None:  # the machine is back to what its store holds
            return make_result(False, m._state, error, result)
    return make_result(True, b, None, result)


def commit_now(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    result: EffectResult | None,
    attempts: int,
    errors: int,
    key: str | None,
) -> TransitionResult[Any] | None:
    """:func:`commit` without a coroutine, for a machine with nothing to await on the
    way (no hooks, no store or persistence, no state timeout, a target that is not
    final, no info log): the same steps; ``None`` when :func:`commit` must run."""
    d = m._def
    if (
        d.commit_hooks
        or m._store is not None
        or d.persist_state is not None
        or d.state_timeout_s is not None
        or ct.to in d.finals
        or d.observer.enabled("info")
    ):
        return None
    b = _enter(m, ct, ev, result, attempts, errors, key, d.clock.now(), False)[0]
    return make_result(True, b, None, result)


def _enter(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    result: EffectResult | None,
    attempts: int,
    errors: int,
    key: str | None,
    now: Any,
    left: bool,
) -> tuple[State[Any], StateMetrics, dict[str, Any] | None]:
    """Put the value after entering ``ct.to``: the new state, its visit, and the last
    error the machine had (``left``: the current visit is closed already)."""
    data: dict[str, Any] = {"event": ev.type}
    if ev.payload is not None:
        data["payload"] = ev.payload
    if result is not None and (result.message is not None or result.metadata is not None):
        if result.message is not None:
            data["message"] = result.message
        if result.metadata is not None:
            data["metadata"] = dict(result.metadata)
    head = m._head
    version = head.version + 1
    b: State[Any] = make_state(ct.to, data, now, version, attempts, key)
    record = None
    if key is not None and ct.compensable:
        record = CommittedEffect(ct.to, ct.source, ev.type, ct.index, key, version)
    prior_error = head.last_error
    limit = m._def.history_limit
    head, visit = advance(head, b, now, attempts, errors, record, True, not left, limit)
    m._put(head)
    return b, visit, prior_error


async def _exit_hooks(m: Machine[Any, Any, Any], a: State[Any]) -> None:
    d = m._def
    if d.hooks.on_state_exit is not None:
        await d.observer.call("on_state_exit", d.hooks.on_state_exit, a, m._ctx)


async def _enter_hooks(
    m: Machine[Any, Any, Any],
    a: State[Any],
    b: State[Any],
    ev: Event[Any],
    visit: StateMetrics,
) -> None:
    d = m._def
    hooks = d.hooks
    obs = d.observer
    ctx = m._ctx
    if hooks.on_transition is not None:
        await obs.call("on_transition", hooks.on_transition, a, b, ev, ctx)
    if hooks.on_state_enter is not None:
        await obs.call("on_state_enter", hooks.on_state_enter, b, ctx)
    if hooks.on_metric is not None:
        await obs.call("on_metric", hooks.on_metric, dataclasses.replace(visit))
