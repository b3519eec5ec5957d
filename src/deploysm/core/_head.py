"""A machine's durable state as one immutable value, and the pure functions that
compute the next one.

:class:`Head` is what a snapshot's head holds: the current state, the context, the
version, the status, the transition in flight, the committed effects, the last error,
the state deadline, and the history and metrics. The engine (``_engine``) keeps one
``Head`` and replaces it whole at each step; nothing else assigns it.

The history and the metrics are the two parts that grow with a machine's age. They
are kept as opaque parts of the value: the functions below are the only ones that
change them (:func:`append_history`, :func:`record_exit`, :func:`advance`,
:func:`count`, :func:`mark_finished`), and they change them in place, so that a step
costs the same whatever the machine's age. A value's ``history`` and ``metrics`` are
therefore shared with the values that come after it: read them before the next step
(``build_snapshot`` copies them when it must keep them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from ._history import add_errors, enter_visit, exit_visit, new_metrics, push_history
from ._records import CommittedEffect, InFlight, Status
from ._types import State, StateMachineMetrics, StateMetrics

_new = tuple.__new__

__all__ = [
    "Head",
    "append_history",
    "count",
    "count_attempt",
    "advance",
    "initial_head",
    "mark_finished",
    "record_exit",
]


class Head(NamedTuple):
    """One machine's durable state (the head of its snapshot)."""

    state: State[Any]
    ctx: Any
    version: int
    status: Status
    in_flight: InFlight | None
    committed: list[CommittedEffect]  # never changed in place: a change is a new list
    last_error: dict[str, Any] | None
    state_deadline: datetime | None
    history: list[State[Any]]  # opaque: append_history
    metrics: StateMachineMetrics  # opaque: record_exit, enter_visit, count, mark_finished


def initial_head(initial: str, ctx: Any, now: datetime) -> Head:
    """A machine that has just been built (or that its store has never saved)."""
    metrics = new_metrics(initial, now)
    return Head(State(initial, {}, now, 0), ctx, 0, "active", None, [], None, None, [], metrics)


# ---------------------------------------------------------------- history and metrics


def append_history(head: Head, state: State[Any], limit: int) -> None:
    """Keep ``state`` (the one just left) among the last ``limit`` in the history."""
    push_history(head.history, state, limit)


def record_exit(head: Head, now: datetime) -> StateMetrics:
    """Close the current visit at ``now``; the closed visit."""
    return exit_visit(head.metrics, now)


def advance(
    head: Head,
    to: State[Any],
    now: datetime,
    attempts: int,
    errors: int,
    committed: CommittedEffect | None,
    settles: bool,
    close: bool,
    limit: int,
) -> tuple[Head, StateMetrics]:
    """The value after entering ``to`` (its version is the next one): the current state
    goes to the history (the last ``limit`` kept), ``to``'s visit opens (``close``: the
    current one closes first, else :func:`record_exit` closed it); ``committed`` joins
    the committed effects; ``settles``: the in-flight record and last error are done
    with. One function, as it runs once per transition."""
    old, ctx, _, status, flight, effects, error, deadline, history, metrics = head
    push_history(history, old, limit)
    if close:
        exit_visit(metrics, now)
    visit = enter_visit(metrics, to.name, now, attempts, errors, limit)
    if committed is not None:
        effects = [*effects, committed]
    if settles:
        flight = error = None
    fields = (to, ctx, to.version, status, flight, effects, error, deadline, history, metrics)
    return _new(Head, fields), visit


def count_attempt(head: Head, failed: bool) -> None:
    """One more effect attempt (``failed``: and one more error)."""
    metrics = head.metrics
    metrics.total_attempts += 1
    if failed:
        metrics.total_errors += 1


def count(
    head: Head,
    *,
    attempts: int = 0,
    errors: int = 0,
    retries: int = 0,
    rollbacks: int = 0,
    compensations: int = 0,
    visit_errors: int = 0,
) -> None:
    """Add to the machine's totals (``visit_errors``: to the current visit's errors)."""
    metrics = head.metrics
    if attempts:
        metrics.total_attempts += attempts
    if errors:
        metrics.total_errors += errors
    if retries:
        metrics.total_retries += retries
    if rollbacks:
        metrics.total_rollbacks += rollbacks
    if compensations:
        metrics.total_compensations += compensations
    if visit_errors:
        add_errors(metrics, visit_errors)


def mark_finished(head: Head, status: Status) -> None:
    """Flag the metrics of a machine that ends with ``status``."""
    metrics = head.metrics
    if status == "completed":
        metrics.is_complete = True
    elif status == "failed":
        metrics.is_failed = True
    elif status == "cancelled":
        metrics.is_cancelled = True
