"""The pure decision layer (``_step``): no event loop, no clock, no I/O."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploysm import Event, InFlight, State
from deploysm import effect as deploysm_effect
from deploysm.core._head import Head, initial_head
from deploysm.core._history import copy_metrics
from deploysm.core._step import (
    Commit,
    Fail,
    Failed,
    GiveUp,
    Park,
    Refuse,
    Rerun,
    Retry,
    Rollback,
    after_error,
    after_verdict,
    begin,
    bumped,
    enter,
    failed,
    finished,
    flight_running,
    flight_waiting,
    leave,
    may_ask_policy,
    on_interrupt,
    on_resolve,
    on_resume,
    route,
    timer_fires,
    to_compensate,
    uncommitted,
)
from deploysm.core._types import StateMetrics
from deploysm.durable._snapshot import CommittedEffect

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOT_DONE = object()


def flight(attempt: int = 1) -> InFlight:
    return InFlight("a", "b", Event("go", None, T0), 0, attempt, "m:0:00", T0)


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("facts", "verdict", "expected"),
    [
        (Failed(True, False, 1, 3), True, Retry(2)),
        (Failed(True, False, 3, 3), True, GiveUp(exhausted=True)),
        (Failed(True, False, 1, 1), True, GiveUp(exhausted=False)),
        (Failed(False, False, 1, 3), True, GiveUp(exhausted=False)),  # no rollback: never again
        (Failed(False, True, 1, 3), True, Retry(2)),
        (Failed(True, True, 1, 3, can_retry=False), True, GiveUp(exhausted=False)),
        (Failed(True, True, 1, 3, can_retry=True), False, GiveUp(exhausted=False)),
    ],
)
def test_after_verdict(facts: Failed, verdict: bool, expected: Any) -> None:
    assert after_verdict(facts, verdict) == expected
    assert may_ask_policy(facts) == isinstance(after_verdict(facts, True), Retry)


@pytest.mark.parametrize(
    ("idempotent", "has_rollback", "verdict", "max_attempts", "attempt", "expected"),
    [
        (False, True, "done", 3, 1, [Commit()]),
        (False, False, "not_done", 3, 1, [Rerun(1)]),
        (True, False, "unknown", 3, 2, [Rerun(2)]),
        (False, False, "unknown", 3, 1, [Park()]),
        (False, True, "unknown", 3, 1, [Rollback(1), Rerun(2)]),
        (False, True, "unknown", 3, 3, [Rollback(3), Fail("exhausted")]),
        (False, True, "unknown", 1, 1, [Rollback(1), Fail("crash")]),
    ],
)
def test_on_resume(
    idempotent: bool,
    has_rollback: bool,
    verdict: str,
    max_attempts: int,
    attempt: int,
    expected: list[Any],
) -> None:
    got = on_resume(
        flight(attempt),
        idempotent=idempotent,
        has_rollback=has_rollback,
        verdict=verdict,
        max_attempts=max_attempts,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("action", "idempotent", "expected"),
    [
        ("retry", False, [Rerun(3)]),
        ("mark_succeeded", False, [Commit()]),
        ("mark_failed", False, [Rollback(2), Fail("operator")]),
        ("mark_failed", True, [Fail("operator")]),
    ],
)
def test_on_resolve(action: str, idempotent: bool, expected: list[Any]) -> None:
    assert on_resolve(action, flight(2), idempotent=idempotent) == expected


def test_an_interrupted_attempt_is_rolled_back_only_if_it_ran_and_can_be() -> None:
    assert on_interrupt(True, True, 3) == [Rollback(3)]
    assert on_interrupt(False, True, 3) == []  # idempotent, or already rolled back
    assert on_interrupt(True, False, 3) == []


def test_after_error_rolls_back_only_non_idempotent_attempts() -> None:
    assert after_error(True, True, 2) == []
    assert after_error(False, False, 2) == []  # nothing to undo it with: never retried
    assert after_error(False, True, 2) == [Rollback(2)]


def test_a_step_replaces_the_value_and_leaves_the_old_one_as_it_was() -> None:
    h0 = initial_head("a", {"n": 1}, T0)
    h1 = begin(h0, flight())
    assert h0.in_flight is None and h1.in_flight is not None
    h2 = flight_waiting(h1, 2, T0, 1500.0)
    assert h1.in_flight is not None and h1.in_flight.phase == "running"
    assert h2.in_flight is not None and h2.in_flight.attempt == 2
    assert h2.in_flight.next_retry_at == T0 + timedelta(milliseconds=1500)
    h3 = flight_running(h2, 2, T0 + timedelta(seconds=2))
    assert h3.in_flight is not None and h3.in_flight.phase == "running"
    assert h3.in_flight.next_retry_at is None
    with pytest.raises(AttributeError):
        h3.version = 9  # type: ignore[misc]


def test_commit_keeps_the_old_state_in_the_history_and_settles_the_flight() -> None:
    h = begin(initial_head("a", None, T0), flight())
    h = h._replace(last_error={"message": "x"})
    leave(h, T0 + timedelta(seconds=1))
    record = CommittedEffect("b", "a", "go", 0, "k", 1)
    nxt, visit = enter(h, State("b", {}, T0, h.version + 1), T0, 1, 0, record, limit=10)
    assert [s.name for s in nxt.history] == ["a"]
    assert nxt.state.name == "b" and nxt.version == 1
    assert nxt.in_flight is None and nxt.last_error is None
    assert nxt.committed == [record] and h.committed == []
    assert visit.state == "b" and nxt.metrics.total_transitions == 1
    assert nxt.metrics.states[0].duration_ms == 1000.0
    assert uncommitted(nxt, record).committed == []


def test_failure_keeps_the_flight_only_when_parked() -> None:
    h = begin(initial_head("a", None, T0), flight())
    assert failed(h, {"message": "x"}, keep_flight=False).in_flight is None
    parked = finished(h, "needs_attention", {"message": "y"})
    assert failed(parked, {"message": "x"}, keep_flight=True).in_flight is not None
    done = finished(h, "completed")
    assert done.status == "completed" and done.metrics.is_complete


def test_a_timer_applies_only_to_the_state_it_was_armed_in() -> None:
    h = initial_head("a", None, T0)
    assert timer_fires(h, h.state)
    assert not timer_fires(begin(h, flight()), h.state)
    assert not timer_fires(finished(h, "cancelled"), h.state)
    assert not timer_fires(h, State("a", {}, T0, 0))


# ---------------------------------------------------------------- properties

# An outcome of one attempt: ok, a failure (the effect's can_retry, the policy's
# verdict) or a crash (the reconcile verdict when the machine resumes).
outcomes = st.one_of(
    st.just(("ok",)),
    st.tuples(st.just("fail"), st.sampled_from([None, True, False]), st.booleans()),
    st.tuples(st.just("crash"), st.sampled_from(["done", "not_done", "unknown"])),
    st.tuples(st.just("interrupt"), st.sampled_from(["timeout", "cancel"])),
)


def simulate(
    idempotent: bool, has_rollback: bool, max_attempts: int, seq: list[tuple[Any, ...]]
) -> tuple[list[Any], list[int]]:
    """Drive the pure rules as the driver does, the effect's outcomes from ``seq``: the
    commands given, and the version after each durable write."""
    h: Head = bumped(begin(initial_head("a", None, T0), flight()))  # the intent
    versions = [h.version]
    commands: list[Any] = [Rerun(1)]  # the first attempt runs
    attempt = 1
    for outcome in seq:
        if outcome[0] == "ok":
            nxt, _ = enter(h, State("b", {}, T0, h.version + 1), T0, attempt, 0, limit=10)
            versions.append(nxt.version)
            commands.append(Commit())
            return commands, versions
        if outcome[0] == "interrupt":  # the running attempt is cut short: the run ends
            commands += on_interrupt(not idempotent, has_rollback, attempt)
            h = bumped(failed(h, {"message": outcome[1]}, keep_flight=False))
            versions.append(h.version)
            commands.append(Fail(outcome[1]))
            return commands, versions
        if outcome[0] == "fail":
            commands += after_error(idempotent, has_rollback, attempt)
            facts = Failed(idempotent, has_rollback, attempt, max_attempts, outcome[1])
            decision = after_verdict(facts, outcome[2] if may_ask_policy(facts) else False)
            if isinstance(decision, GiveUp):
                h = bumped(failed(h, {"message": "gave up"}, keep_flight=False))
                versions.append(h.version)
                commands.append(Fail("gave up"))
                return commands, versions
            attempt = decision.attempt
            h = bumped(flight_waiting(h, attempt, T0, 10.0))
            versions.append(h.version)
            h = bumped(flight_running(h, attempt))
            versions.append(h.version)
            commands.append(Rerun(attempt))
            continue
        assert h.in_flight is not None
        if outcome[1] == "not_done":
            commands.append(NOT_DONE)  # reconcile: the interrupted attempt left nothing
        plan = on_resume(
            h.in_flight,
            idempotent=idempotent,
            has_rollback=has_rollback,
            verdict=outcome[1],
            max_attempts=max_attempts,
        )
        commands += plan
        last = plan[-1]
        if isinstance(last, (Commit, Fail, Park)):
            return commands, versions
        attempt = last.attempt
        h = bumped(flight_running(h, attempt))
        versions.append(h.version)
    return commands, versions


@settings(max_examples=300, deadline=None)
@given(
    idempotent=st.booleans(),
    has_rollback=st.booleans(),
    max_attempts=st.integers(1, 5),
    seq=st.lists(outcomes, max_size=12),
)
def test_a_non_idempotent_effect_never_runs_twice_without_a_rollback_between(
    idempotent: bool, has_rollback: bool, max_attempts: int, seq: list[tuple[Any, ...]]
) -> None:
    commands, versions = simulate(idempotent, has_rollback, max_attempts, seq)
    if not idempotent:
        unrolled = False  # an attempt ran and was neither rolled back nor found not done
        for c in commands:
            if isinstance(c, Rerun):
                assert not unrolled, commands
                unrolled = True
            elif isinstance(c, Rollback) or c is NOT_DONE:
                unrolled = False
    # every durable change moves the version by exactly one
    assert all(b - a == 1 for a, b in itertools.pairwise(versions)), versions


def test_copy_metrics_copies_every_field_of_every_visit() -> None:
    h = initial_head("a", None, T0)
    leave(h, T0 + timedelta(seconds=1))
    h, _ = enter(h, State("b", {}, T0, 1), T0 + timedelta(seconds=1), 2, 1, limit=10)
    copy = copy_metrics(h.metrics, 0.0)
    assert copy == h.metrics
    for mine, theirs in zip(copy.states, h.metrics.states, strict=True):
        assert mine is not theirs
        for f in dataclasses.fields(StateMetrics):
            assert getattr(mine, f.name) == getattr(theirs, f.name)
    h.metrics.states[-1].errors += 5
    assert copy.states[-1].errors == 1


def test_route_finds_the_candidates_or_says_why_not() -> None:
    from deploysm.core._definition import compile_config
    from deploysm.examples.simple import simple_config

    d = compile_config(simple_config())
    first = next(iter(d.index))
    event = next(iter(d.index[first]))
    assert route(d.index, d.event_set, first, event) == d.index[first][event]
    assert route(d.index, d.event_set, first, "NO_SUCH_EVENT") == Refuse("no_transition", True)
    other = next((e for e in d.events if e not in d.index[first]), None)
    if other is not None:
        assert route(d.index, d.event_set, first, other) == Refuse("no_transition", False)


def test_compensation_undoes_effects_with_a_rollback_newest_first() -> None:
    def effect(has_rollback: bool) -> Any:
        build = deploysm_effect().execute(lambda c, s: None)
        return (build.rollback(lambda c, s: None) if has_rollback else build).build()

    effects = [effect(True), effect(False), None, effect(True)]
    committed = [CommittedEffect(f"s{i}", "a", "go", i, f"k{i}", i + 1) for i in (0, 1, 3)]
    assert [c.state for c in to_compensate(committed, effects)] == ["s3", "s0"]
