"""The pure decisions of a machine: no ``await``, no clock, no randomness, no I/O.

Each function takes the current :class:`~._head.Head` and an input (an event's chosen
transition, an effect outcome, a retry verdict, a resume, a resolve, a cancel, a
timer firing), with the time and the random numbers as arguments, and returns the
next value, or the commands the driver carries out (:mod:`._runner`,
:mod:`._recovery`, :mod:`._commit`, :mod:`._lifecycle`, :mod:`._saga`), or both. The
driver awaits effects, hooks, the store and timers; this module never does.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._definition import CompiledTransition
from ._effects import Effect
from ._head import Head, advance, mark_finished, record_exit
from ._records import CommittedEffect, InFlight, Status
from ._types import State, StateMetrics

_NONE: Mapping[str, Sequence[CompiledTransition]] = {}
_new = tuple.__new__

__all__ = [
    "Commit",
    "Fail",
    "Failed",
    "GiveUp",
    "Park",
    "Refuse",
    "Rerun",
    "Retry",
    "Rollback",
    "after_error",
    "after_verdict",
    "begin",
    "bumped",
    "cleared",
    "enter",
    "failed",
    "finished",
    "flight_running",
    "flight_waiting",
    "leave",
    "may_ask_policy",
    "on_interrupt",
    "on_resolve",
    "on_resume",
    "resumed_active",
    "route",
    "timer_fires",
    "to_compensate",
    "uncommitted",
    "with_deadline",
]


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Rollback:
    """Run the effect's rollback for attempt ``attempt`` (before anything else runs)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay_ms`` (recorded as the in-flight retry deadline), then run ``attempt``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts: fail the transition (``exhausted``: every allowed one ran)."""

    exhausted: bool


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the transition in flight without running its effect (again)."""


@dataclass(frozen=True, slots=True)
class Rerun:
    """Run the effect in flight again as attempt ``attempt`` (same idempotency key)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Park:
    """Stop in ``needs_attention``: only an operator may decide."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Record the transition in flight as failed (``why``: ``crash``, ``exhausted``,
    ``operator``)."""

    why: str


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the event (``reason``: ``no_transition``; ``unknown``: it is not one of the
    definition's events)."""

    reason: str
    unknown: bool


def route(
    index: Mapping[str, Mapping[str, Sequence[CompiledTransition]]],
    events: Container[str],
    state: str,
    event: str,
) -> Sequence[CompiledTransition] | Refuse:
    """The transitions of ``state`` on ``event``, in order (their guards decide which
    one runs, first open wins), or why the event is refused."""
    candidates = index.get(state, _NONE).get(event)
    if candidates:
        return candidates
    return Refuse("no_transition", event not in events)


def to_compensate(
    committed: Sequence[CommittedEffect], effects: Sequence[Effect[Any] | None]
) -> list[CommittedEffect]:
    """The committed effects a compensation undoes, newest first: those with a rollback."""
    out = []
    for record in reversed(committed):
        eff = effects[record.transition_index]
        if eff is not None and eff.rollback is not None:
            out.append(record)
    return out


# ---------------------------------------------------------------- effect outcomes


def after_error(idempotent: bool, has_rollback: bool, attempt: int) -> list[Any]:
    """A failed attempt: a non-idempotent one is rolled back (if it can be) before
    anything else."""
    return [Rollback(attempt)] if has_rollback and not idempotent else []


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed (and, if need be, rolled back) attempt, as the retry rule sees it.

    ``can_retry``: the effect result's own say (``None``: it gave none)."""

    idempotent: bool
    has_rollback: bool
    attempt: int
    max_attempts: int
    can_retry: bool | None = None


def after_verdict(f: Failed, verdict: bool) -> Retry | GiveUp:
    """Whether a failed attempt is tried again; ``verdict`` is the retry policy's
    (``retryable_errors``/``should_retry``), asked only when all else allows it
    (:func:`may_ask_policy`)."""
    if f.attempt >= f.max_attempts:
        return GiveUp(exhausted=f.max_attempts > 1)
    if not f.idempotent and not f.has_rollback:
        return GiveUp(exhausted=False)  # never run again on top of its own partial result
    if f.can_retry is False or not verdict:
        return GiveUp(exhausted=False)
    return Retry(f.attempt + 1)


def on_interrupt(unrolled: bool, has_rollback: bool, attempt: int) -> list[Any]:
    """An attempt cut short (a transition timeout, a cancel): a non-idempotent attempt
    that started and was not rolled back yet is rolled back (if it can be)."""
    return [Rollback(attempt)] if unrolled and has_rollback else []


def may_ask_policy(f: Failed) -> bool:
    """Whether the retry policy is asked at all."""
    return isinstance(after_verdict(f, True), Retry)


# ---------------------------------------------------------------- resume and resolve


def on_resume(
    flight: InFlight, *, idempotent: bool, has_rollback: bool, verdict: str, max_attempts: int
) -> list[Any]:
    """An attempt a crash interrupted (``phase="running"``), given its reconcile
    ``verdict`` (``done``, ``not_done``, ``unknown``)."""
    if verdict == "done":
        return [Commit()]
    if verdict == "not_done" or idempotent:
        return [Rerun(flight.attempt)]
    if not has_rollback:
        return [Park()]
    if flight.attempt < max_attempts:
        return [Rollback(flight.attempt), Rerun(flight.attempt + 1)]
    return [Rollback(flight.attempt), Fail("exhausted" if max_attempts > 1 else "crash")]


def on_resolve(action: str, flight: InFlight, *, idempotent: bool) -> list[Any]:
    """An operator's decision on a parked transition."""
    if action == "retry":
        return [Rerun(flight.attempt + 1)]
    if action == "mark_succeeded":
        return [Commit()]
    return ([] if idempotent else [Rollback(flight.attempt)]) + [Fail("operator")]


def timer_fires(head: Head, state: State[Any]) -> bool:
    """Whether a state timer armed in ``state`` still applies when it fires."""
    return head.state is state and head.status == "active" and head.in_flight is None


# ---------------------------------------------------------------- next values


# The functions on the hot path build the next value positionally (a NamedTuple's
# ``_replace`` costs several times more).


def begin(head: Head, flight: InFlight) -> Head:
    """The intent of a transition: ``flight`` is now in flight."""
    state, ctx, version, status, _, committed, error, deadline, history, metrics = head
    return _new(
        Head, (state, ctx, version, status, flight, committed, error, deadline, history, metrics)
    )


def cleared(head: Head) -> Head:
    """Nothing in flight any more."""
    return head._replace(in_flight=None)


def bumped(head: Head, by: int = 1) -> Head:
    """One more durable change (``by=-1``: a write that failed takes it back)."""
    return head._replace(version=head.version + by)


def flight_waiting(head: Head, attempt: int, now: datetime, delay_ms: float) -> Head:
    flight = head.in_flight
    assert flight is not None
    return head._replace(
        in_flight=_flight(
            flight, attempt, flight.started_at, "retry_wait", now + timedelta(milliseconds=delay_ms)
        )
    )


def flight_running(head: Head, attempt: int, started_at: datetime | None = None) -> Head:
    flight = head.in_flight
    assert flight is not None
    start = flight.started_at if started_at is None else started_at
    return head._replace(in_flight=_flight(flight, attempt, start, "running", None))


def _flight(
    f: InFlight, attempt: int, started: datetime, phase: Any, next_at: datetime | None
) -> InFlight:
    return InFlight(
        f.from_state,
        f.to_state,
        f.event,
        f.transition_index,
        attempt,
        f.idempotency_key,
        started,
        phase,
        next_at,
    )


def enter(
    head: Head,
    to: State[Any],
    now: datetime,
    attempts: int,
    errors: int,
    committed: CommittedEffect | None = None,
    *,
    limit: int,
    settles: bool = True,
    left: bool = True,
) -> tuple[Head, StateMetrics]:
    """Commit: leave the current state for ``to`` (whose version is the head's plus
    one), keep the old one in the history; the new value and the new visit.
    ``settles``: the transition in flight (and the last error) is done with; a move
    that is not a transition's commit (into the compensated state) keeps them.
    ``left``: :func:`leave` closed the current visit already (else this does);
    ``limit``: the definition's ``history_limit``."""
    return advance(head, to, now, attempts, errors, committed, settles, not left, limit)


leave = record_exit  # close the current visit (before :func:`enter`); the closed visit


def failed(head: Head, error: dict[str, Any], keep_flight: bool) -> Head:
    """A transition failed: the state stays; the in-flight record stays only when the
    machine is parked (an operator decides about it)."""
    flight = head.in_flight if keep_flight else None
    return head._replace(in_flight=flight, last_error=error)


def finished(head: Head, status: Status, last_error: Any = ...) -> Head:
    """The machine ends (or parks) with ``status`` (and, if given, ``last_error``)."""
    mark_finished(head, status)
    nxt = head._replace(status=status)
    if last_error is not ...:
        nxt = nxt._replace(last_error=last_error)
    return nxt


def resumed_active(head: Head) -> Head:
    """An operator took the machine out of ``needs_attention``."""
    return head._replace(status="active", last_error=None)


def uncommitted(head: Head, record: CommittedEffect) -> Head:
    """``record``'s effect was compensated: it leaves the list."""
    return head._replace(committed=[c for c in head.committed if c is not record])


def with_deadline(head: Head, deadline: datetime | None) -> Head:
    return head._replace(state_deadline=deadline)
