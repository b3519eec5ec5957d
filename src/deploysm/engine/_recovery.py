"""Finishing what a crash interrupted (``resume``) and operator decisions (``resolve``)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..core import _step as step
from ..core._definition import CompiledTransition
from ..core._effects import Effect, call_maybe_async
from ..core._errors import EffectError, ErrorCode, RetryExhaustedError, StateMachineError
from ..core._head import count
from ..core._types import EffectResult, State, TransitionResult
from ..durable._snapshot import InFlight, SerializableState
from ..stores._base import JournalRecord
from . import _durability as durability
from . import _lease as lease
from ._attempt import Run
from ._commit import commit
from ._runner import _NotDurable, drive, error_fields, fail, rollback, start_attempt
from ._timeouts import uninterrupted

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["ResolveAction", "resolve", "resume"]

ResolveAction = Literal["retry", "mark_succeeded", "mark_failed"]
_ACTIONS = ("retry", "mark_succeeded", "mark_failed")


async def load(m: Machine[Any, Any, Any]) -> SerializableState | None:
    d = m._def
    if m._store is not None:
        snap: SerializableState | None = await m._store.load(m.machine_id)
        return snap
    if d.load_state is not None:
        raw = await call_maybe_async(d.load_state)
        return None if raw is None else SerializableState.coerce(raw)
    raise StateMachineError(
        "resume() needs a store= or a load_state= in the config", ErrorCode.INVALID_CONFIG
    )


async def resume(
    m: Machine[Any, Any, Any], claimed: SerializableState | None = None
) -> TransitionResult[Any] | None:
    """Load the stored snapshot and finish its in-flight transition, if any.

    ``claimed``: the snapshot a worker's claim has just read and validated, so the
    store is not read (and the snapshot not decoded) a second time. A machine that
    leases itself takes the lease first (``_lease.take_over``): ``LEASE_HELD`` while
    another owner's lease is live, and then nothing changed."""
    taken = False
    if claimed is not None:
        durability.rehydrate(m, claimed, check_busy=False, validated=True)
    else:
        snap = await load(m)
        if snap is None:
            return None
        if snap.in_flight is not None and snap.status == "active" and lease.applies(m):
            snap, taken = await _take_over(m, snap)
        durability.rehydrate(m, snap, check_busy=False)
    flight = m._in_flight
    if flight is None or m._status != "active":
        return None
    ct, eff = _transition_of(m, flight)
    if not taken:  # else the take-over wrote it
        m.note("resumed", attempt=flight.attempt, phase=flight.phase, key=flight.idempotency_key)
    if flight.phase == "retry_wait":
        return await drive(m, ct, flight.event, eff, Run(flight.attempt), flight.next_retry_at)
    target = _target(m, flight)
    verdict = await _reconcile(m, eff, target)
    if verdict != "unknown":
        m.note("reconciled", verdict=verdict, attempt=flight.attempt)
    policy = m._def.retry
    plan = step.on_resume(
        flight,
        idempotent=eff.idempotent,
        has_rollback=eff.rollback is not None,
        verdict=verdict,
        max_attempts=policy.max_attempts if policy is not None else 1,
    )

    def crashed(why: str, run: Run) -> BaseException:
        crash = EffectError(
            f"attempt {flight.attempt} of {ct.source} -> {ct.to} was interrupted and rolled back",
            state=ct.source,
        )
        run.errors = 1
        if why != "exhausted":
            return crash
        exhausted = RetryExhaustedError(
            f"{ct.source} -> {ct.to}: all {flight.attempt} attempts used",
            attempts=flight.attempt,
            state=ct.source,
        )
        exhausted.__cause__ = crash
        return exhausted

    return await _carry_out(m, ct, eff, flight, plan, target, "reconciled after a restart", crashed)


async def resolve(
    m: Machine[Any, Any, Any], action: str, by: str | None, reason: str | None
) -> TransitionResult[Any] | None:
    """Take a parked machine out of ``needs_attention`` as the operator decided."""
    if action not in _ACTIONS:
        raise StateMachineError(
            f"unknown action {action!r}: use one of {', '.join(_ACTIONS)}", "INVALID_ACTION"
        )
    if m._status != "needs_attention":
        raise StateMachineError(
            f"machine {m.machine_id!r} is {m._status}, not needs_attention: nothing to resolve",
            "NOT_PARKED",
        )
    flight = m._in_flight
    if lease.applies(m):  # the decision is written first, taking the lease
        snap = durability.build_snapshot(m)
        snap = dataclasses.replace(snap, status="active", last_error=None, version=m._version + 1)
        note = JournalRecord("resolved", m._def.clock.now(), _data(action, by, reason))
        await lease.take_over(m, snap, [*m._pending, note])  # else nothing changed
        m._pending = []
        m._saved_version = snap.version
        m._put(step.bumped(step.resumed_active(m._head)))
        if flight is None:
            return None
    else:
        m.note("resolved", action=action, by=by, reason=reason)
        m._put(step.resumed_active(m._head))
        if flight is None:
            err = await m.persist(bump=True)
            if err is not None:
                raise err
            return None
    ct, eff = _transition_of(m, flight)
    plan = step.on_resolve(action, flight, idempotent=eff.idempotent)
    done = f"marked succeeded by {by or 'an operator'}"
    why = f"marked failed by {by or 'an operator'}: {reason or 'no reason given'}"
    target = _target(m, flight)
    return await _carry_out(m, ct, eff, flight, plan, target, done, lambda *_: EffectError(why))


async def _carry_out(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    eff: Effect[Any],
    flight: InFlight,
    plan: list[Any],
    target: State[Any],
    done: str,
    failure: Callable[[str, Run], BaseException],
) -> TransitionResult[Any]:
    """Carry out the commands of :func:`._step.on_resume` or :func:`._step.on_resolve`."""
    run = Run(flight.attempt)
    for cmd in plan:
        if isinstance(cmd, step.Rollback):
            run.unrolled = True
            error = await rollback(m, eff, target, run)
            if error is not None:
                return await fail(m, ct, run, error)
        elif isinstance(cmd, step.Commit):
            result = EffectResult(True, message=done)
            key = flight.idempotency_key
            return await commit(m, ct, flight.event, result, flight.attempt, 0, key)
        elif isinstance(cmd, step.Rerun):
            return await _rerun(m, ct, eff, flight, cmd.attempt)
        elif isinstance(cmd, step.Park):
            return await _park(m, flight)
        else:
            assert isinstance(cmd, step.Fail)
            return await fail(m, ct, run, failure(cmd.why, run))
    raise AssertionError(f"a plan that settles nothing: {plan}")


async def _rerun(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    eff: Effect[Any],
    flight: InFlight,
    attempt: int,
) -> TransitionResult[Any]:
    if attempt > flight.attempt:
        count(m._head, retries=1)
    m._put(step.flight_running(m._head, attempt, m._def.clock.now()))
    try:
        await start_attempt(m)
    except _NotDurable as e:  # the attempt is not durable: it does not run
        return TransitionResult(False, m._state, e.error)
    return await drive(m, ct, flight.event, eff, Run(attempt))


async def _take_over(
    m: Machine[Any, Any, Any], snap: SerializableState
) -> tuple[SerializableState, bool]:
    """Take the lease of the in-flight ``snap`` for ``m``: the snapshot now stored, and
    whether it was taken over. When the stored version is newer than the one loaded,
    load again: nothing may be in flight any more (its owner finished it)."""
    for _ in range(3):
        bad = durability.snapshot_problem(snap, m._def, m.machine_id if m._explicit_id else None)
        if bad:
            raise StateMachineError(
                f"snapshot does not fit this machine: {bad}", "INVALID_SNAPSHOT"
            )
        flight = snap.in_flight
        assert flight is not None
        taken = dataclasses.replace(snap, version=snap.version + 1)
        data = {"attempt": flight.attempt, "phase": flight.phase, "key": flight.idempotency_key}
        note = JournalRecord("resumed", m._def.clock.now(), data)
        try:
            await lease.take_over(m, taken, [note])
            return taken, True
        except StateMachineError as e:
            if e.code != ErrorCode.CONFLICT:
                raise
            again = await load(m)
            if again is None:
                raise
            if again.in_flight is None or again.status != "active":
                return again, False
            snap = again
    raise StateMachineError(
        f"machine {m.machine_id!r} kept changing while resume() took it over", ErrorCode.CONFLICT
    )


def _data(action: str, by: str | None, reason: str | None) -> dict[str, Any]:
    return {"action": action, "by": by, "reason": reason}


async def _park(m: Machine[Any, Any, Any], flight: InFlight) -> TransitionResult[Any]:
    """A non-idempotent effect without rollback was interrupted: never re-run it alone."""
    err = StateMachineError(
        f"attempt {flight.attempt} of {flight.from_state} -> {flight.to_state} was interrupted; "
        "its effect is not idempotent and has no rollback, so it is not run again: check it "
        "and resolve() the machine with 'retry', 'mark_succeeded' or 'mark_failed'",
        ErrorCode.NEEDS_ATTENTION,
        state=flight.from_state,
    )
    m._put(step.finished(m._head, "needs_attention", m.error_record(err)))
    m.note("needs_attention", attempt=flight.attempt, **error_fields(m, err))
    await m.report_error(err)
    persist_error = await m.persist(bump=True)
    return TransitionResult(False, m._state, persist_error or err)


async def _reconcile(m: Machine[Any, Any, Any], eff: Effect[Any], target: State[Any]) -> str:
    if eff.reconcile is None:
        return "unknown"
    try:
        verdict = eff.reconcile(m._ctx, target)
        if inspect.isawaitable(verdict):
            verdict = await uninterrupted(verdict)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        m.note("reconcile_failed", **error_fields(m, e))
        return "unknown"
    return verdict if verdict in ("done", "not_done") else "unknown"


def _transition_of(
    m: Machine[Any, Any, Any], flight: InFlight
) -> tuple[CompiledTransition, Effect[Any]]:
    for ct in m._def.transitions:
        same = ct.index == flight.transition_index and ct.source == flight.from_state
        if same and ct.effect is not None and ct.to == flight.to_state:
            return ct, ct.effect
    raise StateMachineError(
        f"in-flight transition {flight.from_state} -> {flight.to_state} is not in this definition",
        ErrorCode.INVALID_SNAPSHOT,
    )


def _target(m: Machine[Any, Any, Any], flight: InFlight) -> State[Any]:
    now: datetime = m._def.clock.now()
    return State(flight.to_state, {}, now, m._version, flight.attempt, flight.idempotency_key)
