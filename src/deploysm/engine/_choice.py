"""Choosing the transition for an event (guards, context check) and starting it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._definition import CompiledTransition
from ..core._effects import call_maybe_async
from ..core._errors import ErrorCode, StateMachineError, TransitionError
from ..core._types import Event, TransitionResult
from ._commit import commit, commit_now
from ._runner import run_transition

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["choose_and_run"]

_NONE: Mapping[str, Any] = {}


async def choose_and_run(m: Machine[Any, Any, Any], ev: Event[Any]) -> TransitionResult[Any]:
    """Rule 1 and on: pick the transition, check the context, run the effect or commit."""
    head = m._head
    if head.status != "active" or head.in_flight is not None or m._stale or m._cancel_requested:
        m.check_active()  # raises
    d = m._def
    state = head.state
    candidates = d.index.get(state.name, _NONE).get(ev.type)  # step.route, inlined
    if not candidates:
        candidates = step.route(d.index, d.event_set, state.name, ev.type)
        assert isinstance(candidates, step.Refuse)
        why = "unknown event" if candidates.unknown else "no transition"
        return await _refuse(
            m,
            TransitionError(
                f"{why}: {state.name!r} has no transition on {ev.type!r}",
                state=state.name,
                reason=candidates.reason,
                event=ev.type,
            ),
        )
    chosen: CompiledTransition | None = None
    guard_error: Exception | None = None
    ctx = head.ctx
    for ct in candidates:
        guard = ct.guard
        if guard is None:
            chosen = ct
            break
        try:
            ok = guard(ctx, ev)
            if inspect.isawaitable(ok):
                ok = await ok
        except Exception as e:
            guard_error = e
            continue
        if ok:
            chosen = ct
            break
    if chosen is None:
        err = TransitionError(
            f"every guard refused {ev.type!r} in {state.name!r}",
            state=state.name,
            reason="guard",
            event=ev.type,
        )
        err.__cause__ = guard_error
        return await _refuse(m, err)
    if d.validate_context is not None:
        refused = await _check_context(m)
        if refused is not None:
            return await _refuse(m, refused)
    eff = chosen.effect
    if eff is None:
        done = commit_now(m, chosen, ev, None, 0, 0, None)
        if done is not None:
            return done
        return await commit(m, chosen, ev, None, 0, 0, None)
    return await run_transition(m, chosen, ev, eff)


async def _check_context(m: Machine[Any, Any, Any]) -> StateMachineError | None:
    fn = m._def.validate_context
    assert fn is not None
    cause: Exception | None = None
    try:
        ok = await call_maybe_async(fn, m._ctx)
    except Exception as e:
        ok, cause = False, e
    if ok:
        return None
    err = StateMachineError(
        "the context failed validation; the transition was refused",
        ErrorCode.INVALID_CONTEXT,
        state=m._state.name,
    )
    err.__cause__ = cause
    return err


async def _refuse(m: Machine[Any, Any, Any], error: StateMachineError) -> TransitionResult[Any]:
    obs = m._def.observer
    if obs.enabled("warning"):
        await obs.log(
            "warning",
            f"transition refused: {obs.error_text(error)}",
            {"machine_id": m.machine_id, "state": m._state.name, "code": error.code},
        )
    return TransitionResult(False, m._state, error)
