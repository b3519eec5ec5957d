"""A machine's bounded memory of its past: the recent history, the recent metrics
visits and the per-state totals.

A machine keeps at most ``history_limit`` states it left (``get_history()``, the
snapshot's ``history``) and the visits of those plus the current one
(``metrics.states``); older ones drop off the front. Nothing is lost: every
``committed`` journal record (``durable._format.committed_record``) carries the
state it left (``exited``), so the journal
holds the whole history (``deploysm.stores.full_history``), and ``metrics.per_state``
keeps each state's totals over the machine's whole life. A save's size and cost thus
depend on the limit, not on the machine's age.

Pure functions on the lists and records they are given; the engine calls them where a
transition commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ._types import State, StateMachineMetrics, StateMetrics, StateTotals

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "MAX_HISTORY_LIMIT",
    "add_errors",
    "copy_metrics",
    "enter_visit",
    "exit_visit",
    "new_metrics",
    "push_history",
    "totals_of",
    "window",
]

# Ten recent states: a deployment workflow's whole run (build, test, approve, deploy,
# verify, ...) fits, so a typical machine keeps its history in the snapshot as
# before; a long-lived one saves a few KB however old it is. The rest is one journal
# read away.
DEFAULT_HISTORY_LIMIT = 10
MAX_HISTORY_LIMIT = 1_000_000


def push_history(history: list[State[Any]], state: State[Any], limit: int) -> None:
    """``state`` was left: remember it among the last ``limit``."""
    history.append(state)
    if len(history) > limit:
        del history[: len(history) - limit]


def new_metrics(initial: str, now: datetime) -> StateMachineMetrics:
    """The metrics of a machine that has just entered ``initial``."""
    return StateMachineMetrics(
        states=[StateMetrics(initial, now)],
        current_state=initial,
        per_state={initial: StateTotals(visits=1)},
        started_at=now,
    )


def copy_metrics(metrics: StateMachineMetrics, duration_ms: float) -> StateMachineMetrics:
    """A copy sharing nothing mutable with ``metrics``, its total duration set (each
    visit copied by its constructor: ``dataclasses.replace`` costs ten times more)."""
    return dataclasses.replace(
        metrics,
        states=[
            StateMetrics(v.state, v.entered_at, v.exited_at, v.duration_ms, v.attempts, v.errors)
            for v in metrics.states
        ],
        per_state={k: dataclasses.replace(t) for k, t in metrics.per_state.items()},
        total_duration_ms=duration_ms,
    )


def exit_visit(metrics: StateMachineMetrics, now: datetime) -> StateMetrics:
    """Close the current visit at ``now``; its time counts in its state's totals."""
    visit = metrics.states[-1]
    visit.exited_at = now
    duration = visit.duration_ms = (now - visit.entered_at).total_seconds() * 1000.0
    totals = metrics.per_state.get(visit.state)  # _totals, inlined: once per transition
    if totals is None:
        totals = _totals(metrics, visit.state)
    totals.duration_ms += duration
    return visit


def enter_visit(
    metrics: StateMachineMetrics,
    name: str,
    now: datetime,
    attempts: int,
    errors: int,
    limit: int,
) -> StateMetrics:
    """Open a visit of ``name``, keeping the last ``limit`` finished visits beside it."""
    visit = StateMetrics(name, now, None, None, attempts, errors)
    visits = metrics.states
    visits.append(visit)
    if len(visits) > limit + 1:
        del visits[: len(visits) - limit - 1]
    totals = metrics.per_state.get(name)  # _totals, inlined: once per transition
    if totals is None:
        totals = _totals(metrics, name)
    totals.visits += 1
    totals.attempts += attempts
    totals.errors += errors
    metrics.current_state = name
    metrics.total_transitions += 1
    return visit


def add_errors(metrics: StateMachineMetrics, errors: int) -> None:
    """Failed attempts of a transition out of the current visit."""
    visit = metrics.states[-1]
    visit.errors += errors
    _totals(metrics, visit.state).errors += errors


def window(
    history: list[State[Any]], metrics: StateMachineMetrics, limit: int, journaled: bool
) -> tuple[list[State[Any]], StateMachineMetrics, list[State[Any]]]:
    """A loaded snapshot's history and metrics cut to ``limit`` (new lists), and the
    history entries the journal must take: those cut off,
    or every one when the journal never got them (``journaled`` false: a version-1
    snapshot, written before ``committed`` records carried the state they left)."""
    cut = max(len(history) - limit, 0)
    dropped = history[:cut] if journaled else list(history)
    visits = metrics.states
    if len(visits) > limit + 1:
        metrics = dataclasses.replace(metrics, states=visits[len(visits) - limit - 1 :])
    return history[cut:], metrics, dropped


def totals_of(visits: Iterable[StateMetrics]) -> dict[str, StateTotals]:
    """Per-state totals of ``visits`` (a snapshot that kept every visit: version 1)."""
    out: dict[str, StateTotals] = {}
    for v in visits:
        t = out.get(v.state)
        if t is None:
            t = out[v.state] = StateTotals()
        t.visits += 1
        t.duration_ms += v.duration_ms or 0.0
        t.attempts += v.attempts
        t.errors += v.errors
    return out


def _totals(metrics: StateMachineMetrics, name: str) -> StateTotals:
    totals = metrics.per_state.get(name)
    if totals is None:
        totals = metrics.per_state[name] = StateTotals()
    return totals
