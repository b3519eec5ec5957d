"""Running a transition's effect: intent, attempts, timeouts, retries, rollback, outcome."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._definition import CompiledTransition
from ..core._effects import Effect, call_maybe_async
from ..core._errors import (
    ErrorCode,
    StateMachineError,
    TimeoutError,
)
from ..core._head import count, count_attempt
from ..core._types import Event, State, TransitionResult, make_state
from ..durable._snapshot import InFlight
from ._attempt import Run, decide_retry, final_error, one_attempt
from ._commit import commit, commit_now
from ._lifecycle import finish_cancel
from ._timeouts import deadline, uninterrupted

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = [
    "HandBack",
    "Run",
    "drive",
    "error_fields",
    "fail",
    "rollback",
    "run_transition",
    "start_attempt",
]


def error_fields(m: Machine[Any, Any, Any], error: BaseException) -> dict[str, Any]:
    """An error as journal data: type, code and redacted message."""
    return {
        "error": type(error).__name__,
        "code": getattr(error, "code", None),
        "message": m._def.observer.error_text(error),
    }


def run_transition(
    m: Machine[Any, Any, Any], ct: CompiledTransition, ev: Event[Any], eff: Effect[Any]
) -> Coroutine[Any, Any, TransitionResult[Any]]:
    """Run ``eff`` for ``ct`` with the intent written first; commit or fail.

    A plain function returning the coroutine to await, so that a machine without
    persistence goes straight to :func:`drive`."""
    d = m._def
    head = m._head
    # the version makes the key unique within its machine even when a restarted process
    # replays a seeded random source; the random bits make it unique across machines
    key = f"{m._machine_id}:{head.version}:{d.random.getrandbits(64):016x}"
    m._put(step.begin(head, InFlight(head.state.name, ct.to, ev, ct.index, 1, key, d.clock.now())))
    if m._store is not None or d.persist_state is not None:
        return _intent_then_drive(m, ct, ev, eff, key)
    return drive(m, ct, ev, eff, Run(1))


async def _intent_then_drive(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    eff: Effect[Any],
    key: str,
) -> TransitionResult[Any]:
    if m._store is not None:
        m.note("intent", source=ct.source, to=ct.to, event=ev.type, attempt=1, key=key)
    err = await m.persist(bump=True)
    if err is not None:  # the intent is not durable: the effect must not run
        m._put(step.cleared(m._head))
        return TransitionResult(False, m._state, err)
    return await drive(m, ct, ev, eff, Run(1))


async def drive(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    ev: Event[Any],
    eff: Effect[Any],
    run: Run,
    wait_until: datetime | None = None,
) -> TransitionResult[Any]:
    """Attempt the effect until it succeeds or may not go on; the in-flight record
    (``m._in_flight``) is durable before each attempt starts."""
    d = m._def
    task = m._owner
    run.wait_until = wait_until
    m._cancellable = True
    timeout_cm: Any = None
    try:
        try:
            if d.transition_timeout_s is None:
                result = await _attempts(m, ct, eff, run)
            else:
                timeout_cm = deadline(d.clock, d.transition_timeout_s)
                async with timeout_cm:
                    result = await _attempts(m, ct, eff, run)
        except _NotDurable as e:
            return TransitionResult(False, m._state, e.error, run.last_result)
        except builtins.TimeoutError as e:
            if timeout_cm is None or not timeout_cm.expired():
                raise
            await _undo_interrupted(m, eff, run)
            err: StateMachineError = TimeoutError(
                f"transition {ct.source} -> {ct.to} ran past {d.transition_timeout_s * 1000:g} ms",  # type: ignore[operator]
                state=ct.source,
            )
            err.__cause__ = run.last_error if run.last_error is not None else e
            return await fail(m, ct, run, err)
        except (asyncio.CancelledError, _CancelRequested) as e:
            m._cancellable = False
            if m._abandoned or m._stale:  # another owner has the machine and resumes it
                raise
            external = isinstance(e, asyncio.CancelledError) and (
                not m._cancel_requested or task is None or task.uncancel() > 0
            )
            await _undo_interrupted(m, eff, run)
            m._put(step.cleared(m._head))
            if external:  # the caller cancelled its own dispatch: leave nothing half done
                m.note("interrupted", source=ct.source, to=ct.to, attempt=run.attempt)
                await m.persist(bump=True)
                raise
            await finish_cancel(m)
            err = StateMachineError(
                f"cancelled during {ct.source} -> {ct.to}", ErrorCode.CANCELLED, state=ct.source
            )
            return TransitionResult(False, m._state, err, run.last_result)
    finally:
        m._cancellable = False
    if result is None:
        flight = m._head.in_flight
        key = flight.idempotency_key if flight is not None else None
        done = commit_now(m, ct, ev, run.last_result, run.attempt, run.errors, key)
        if done is not None:
            return done
        return await commit(m, ct, ev, run.last_result, run.attempt, run.errors, key)
    return await fail(m, ct, run, result)


async def _attempts(
    m: Machine[Any, Any, Any], ct: CompiledTransition, eff: Effect[Any], run: Run
) -> BaseException | None:
    """Loop over attempts; ``None`` on success, else the error to fail with."""
    d = m._def
    policy = d.retry
    max_attempts = policy.max_attempts if policy is not None else 1
    if run.wait_until is not None:  # resumed inside a retry delay: finish waiting
        remaining = (run.wait_until - d.clock.now()).total_seconds()
        run.wait_until = None
        if remaining > 0:
            await _retry_wait(m, remaining)
        await start_attempt(m)
        m._put(step.flight_running(m._head, run.attempt, d.clock.now()))
    head = m._head
    ctx = head.ctx
    flight = head.in_flight
    assert flight is not None
    started = flight.started_at  # the first attempt starts when the intent was made
    key = flight.idempotency_key
    while True:
        target: State[Any] = make_state(ct.to, {}, started, m._head.version, run.attempt, key)
        if not eff.idempotent:
            run.unrolled = True
        run.in_attempt = True
        error = await one_attempt(m, eff, ctx, target, run)
        run.in_attempt = False
        count_attempt(m._head, error is not None and not m._cancel_requested)
        if m._cancel_requested:  # cancel() was called from inside this transition
            raise _CancelRequested
        if error is None:
            run.unrolled = False
            return None
        run.errors += 1
        run.last_error = error
        if m._store is not None:
            m.note("attempt_failed", attempt=run.attempt, **error_fields(m, error))
        for _ in step.after_error(eff.idempotent, eff.rollback is not None, run.attempt):
            rb_error = await rollback(m, eff, target, run)
            if rb_error is not None:
                return rb_error
        if not isinstance(await decide_retry(m, eff, error, run, max_attempts), step.Retry):
            return final_error(m, ct, error, run, max_attempts)
        await _before_retry(m, ct, error, target, run)
        started = d.clock.now()


async def _before_retry(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    error: BaseException,
    target: State[Any],
    run: Run,
) -> None:
    d = m._def
    policy = d.retry
    assert policy is not None
    if d.hooks.on_retry is not None:
        await d.observer.call("on_retry", d.hooks.on_retry, run.attempt, error, target, m._ctx)
    delay_ms = policy.delay_ms(run.attempt, d.random, run.prev_delay_ms)
    run.prev_delay_ms = delay_ms
    count(m._head, retries=1)
    obs = d.observer
    if obs.enabled("warning"):
        await obs.log(
            "warning",
            f"{ct.source} -> {ct.to}: attempt {run.attempt} of {policy.max_attempts} failed: "
            f"{type(error).__name__}: {obs.error_text(error)}; retrying in "
            f"{delay_ms / 1000:.3g} s",
            {
                "machine_id": m.machine_id,
                "attempt": run.attempt,
                "max_attempts": policy.max_attempts,
                "delay_ms": round(delay_ms, 3),
            },
        )
    run.attempt += 1
    if m.durable:
        m._put(step.flight_waiting(m._head, run.attempt, d.clock.now(), delay_ms))
        m.note("retry_scheduled", attempt=run.attempt, delay_ms=round(delay_ms, 3))
        await _persist_or_raise(m)
    else:
        m._put(step.flight_running(m._head, run.attempt))
    await _retry_wait(m, delay_ms / 1000.0)
    await start_attempt(m)


class HandBack(BaseException):
    """The worker running the machine is stopping: the machine waits out a retry delay
    that is durable (its deadline is in the stored snapshot), so it is handed back now
    rather than held until the delay is over; nothing more is written."""


async def _retry_wait(m: Machine[Any, Any, Any], seconds: float) -> None:
    """Sleep out a recorded retry delay; raise :class:`HandBack` if the worker that runs
    the machine stops first (its store view carries the ``handback`` event)."""
    handback: asyncio.Event | None = getattr(m._store, "handback", None)
    clock = m._def.clock
    if handback is None:
        await clock.sleep(seconds)
        return
    if handback.is_set():
        raise HandBack
    sleep = asyncio.ensure_future(clock.sleep(seconds))
    stop = asyncio.ensure_future(handback.wait())
    try:
        await asyncio.wait((sleep, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleep, stop):
            t.cancel()
        await asyncio.gather(sleep, stop, return_exceptions=True)
    if not sleep.done() or sleep.cancelled():
        raise HandBack


async def start_attempt(m: Machine[Any, Any, Any]) -> None:
    """Make the next attempt's intent durable (a no-op without persistence)."""
    if m.durable:
        flight = m._in_flight
        assert flight is not None
        m._put(step.flight_running(m._head, flight.attempt))
        m.note("attempt", attempt=flight.attempt, key=flight.idempotency_key)
        await _persist_or_raise(m)


async def _persist_or_raise(m: Machine[Any, Any, Any]) -> None:
    err = await m.persist(bump=True)
    if err is not None:
        raise _NotDurable(err)


class _CancelRequested(Exception):
    """``cancel()`` was called from inside the running transition."""


class _NotDurable(Exception):
    def __init__(self, error: StateMachineError) -> None:
        super().__init__(error.message)
        self.error = error


async def rollback(
    m: Machine[Any, Any, Any], eff: Effect[Any], target: State[Any], run: Run
) -> StateMachineError | None:
    """Undo a failed non-idempotent attempt; a rollback that fails parks the machine."""
    run.unrolled = False
    if eff.rollback is None:
        return None
    try:
        await uninterrupted(call_maybe_async(eff.rollback, m._ctx, target))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        m.note("rollback_failed", attempt=target.attempts, **error_fields(m, e))
        err = StateMachineError(
            f"rollback of {eff.label} failed: {type(e).__name__}: "
            f"{m._def.observer.error_text(e)}; the machine needs an operator",
            ErrorCode.ROLLBACK_FAILED,
            state=m._state.name,
        )
        err.__cause__ = e
        m._put(step.finished(m._head, "needs_attention"))
        return err
    count(m._head, rollbacks=1)
    m.note("rollback", attempt=target.attempts, key=target.idempotency_key)
    obs = m._def.observer
    if obs.enabled("info"):
        await obs.log(
            "info",
            f"rolled back attempt {target.attempts} of {eff.label}",
            {"machine_id": m.machine_id, "attempt": target.attempts},
        )
    return None


async def _undo_interrupted(m: Machine[Any, Any, Any], eff: Effect[Any], run: Run) -> None:
    """An attempt was cut short (timeout, cancel): count it, roll it back if it was
    not idempotent."""
    if run.in_attempt:
        run.in_attempt = False
        run.errors += 1
        count(m._head, attempts=1, errors=1)
    for _ in step.on_interrupt(run.unrolled, eff.rollback is not None, run.attempt):
        flight = m._in_flight
        assert flight is not None
        target = State(
            flight.to_state, {}, m._def.clock.now(), m._version, run.attempt, flight.idempotency_key
        )
        err = await rollback(m, eff, target, run)
        if err is not None:
            run.last_error = err


async def fail(
    m: Machine[Any, Any, Any], ct: CompiledTransition, run: Run, error: BaseException
) -> TransitionResult[Any]:
    """Record the failure: the state stays, ``on_error`` runs, the record is durable."""
    if isinstance(error, _NotDurable):
        return TransitionResult(False, m._state, error.error, run.last_result)
    head = m._head
    count(head, visit_errors=run.errors)
    m._put(step.failed(head, m.error_record(error), keep_flight=head.status == "needs_attention"))
    m.note("failed", source=ct.source, to=ct.to, attempts=run.attempt, **error_fields(m, error))
    await m.report_error(error)
    persist_error = await m.persist(bump=True)
    if persist_error is not None:
        persist_error.__cause__ = error
    return TransitionResult(False, m._state, error, run.last_result)
