"""SPEC 2 rules 1 (choice), 8 (one at a time), 15 (context validation), 16
(troubleshooting), plus how ``dispatch`` reads the events it is given."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import deploysm
from deploysm import (
    ErrorCode,
    Event,
    StateMachineError,
    Transition,
    TransitionError,
    create_state_machine,
    effect,
)

# --- rule 1: choice ---------------------------------------------------------------------


async def test_first_declared_unguarded_transition_is_taken(make_config: Any) -> None:
    cfg = make_config(
        transitions=[
            Transition(from_="idle", to="deploying", event="START"),
            Transition(from_="idle", to="validating", event="START"),
        ]
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert result.success and result.error is None
    assert sm.get_state().name == "deploying"


async def test_first_transition_whose_guard_passes_is_taken(make_config: Any) -> None:
    seen: list[str] = []

    def refuse(ctx: Any, ev: Event[Any]) -> bool:
        seen.append("refuse")
        return False

    async def allow(ctx: Any, ev: Event[Any]) -> bool:
        seen.append("allow")
        return True

    def never_asked(ctx: Any, ev: Event[Any]) -> bool:
        seen.append("never")
        return True

    cfg = make_config(
        transitions=[
            Transition(from_="idle", to="failed", event="START", guard=refuse),
            Transition(from_="idle", to="validating", event="START", guard=allow),
            Transition(from_="idle", to="deploying", event="START", guard=never_asked),
        ]
    )
    sm = create_state_machine(cfg, {})
    assert (await sm.dispatch("START")).success
    assert sm.get_state().name == "validating"
    assert seen == ["refuse", "allow"]


async def test_guard_receives_the_context_and_the_event(make_config: Any) -> None:
    ctx = {"approved": True}
    received: list[tuple[Any, Event[Any]]] = []

    def guard(c: Any, ev: Event[Any]) -> bool:
        received.append((c, ev))
        return bool(c["approved"])

    cfg = make_config(transitions=[Transition("idle", "validating", "START", guard=guard)])
    sm = create_state_machine(cfg, ctx)
    await sm.dispatch(Event("START", payload={"who": "ops"}, correlation_id="c-1"))
    ((c, ev),) = received
    assert c is ctx
    assert (ev.type, ev.payload, ev.correlation_id) == ("START", {"who": "ops"}, "c-1")


async def test_event_without_any_transition_fails_with_transition_error(make_config: Any) -> None:
    sm = create_state_machine(make_config(), {})
    before = sm.get_state()
    result = await sm.dispatch("DEPLOYED")  # a known event, but not from idle
    assert result.success is False
    assert isinstance(result.error, TransitionError)
    assert result.error.code == ErrorCode.TRANSITION_ERROR
    assert result.error.reason == "no_transition"
    assert result.new_state is before and sm.get_state() is before
    assert sm.get_history() == []


async def test_unknown_event_name_fails_without_raising(make_config: Any) -> None:
    sm = create_state_machine(make_config(), {})
    result = await sm.dispatch("NO_SUCH_EVENT")
    assert result.success is False
    assert isinstance(result.error, TransitionError)
    assert sm.get_state().name == "idle"


async def test_every_guard_refusing_fails_with_guard_reason(make_config: Any) -> None:
    ran: list[str] = []
    eff = effect().execute(lambda c, s: ran.append("effect")).set_idempotent(True).build()
    cfg = make_config(
        transitions=[
            Transition("idle", "validating", "START", guard=lambda c, e: False, effect=eff),
            Transition("idle", "deploying", "START", guard=lambda c, e: 0),
        ]
    )
    sm = create_state_machine(cfg, {})
    before = sm.get_state()
    result = await sm.dispatch("START")
    assert result.success is False
    assert isinstance(result.error, TransitionError)
    assert result.error.reason == "guard"
    assert sm.get_state() is before and sm.version == before.version
    assert ran == []


async def test_raising_guard_refuses_and_its_error_is_in_the_result(make_config: Any) -> None:
    boom = RuntimeError("approval service down")

    async def guard(c: Any, e: Event[Any]) -> bool:
        raise boom

    cfg = make_config(transitions=[Transition("idle", "validating", "START", guard=guard)])
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert result.success is False
    assert isinstance(result.error, TransitionError)
    assert result.error.reason == "guard"
    assert result.error.__cause__ is boom
    assert sm.get_state().name == "idle"


async def test_raising_guard_lets_a_later_candidate_pass(make_config: Any) -> None:
    def broken(c: Any, e: Event[Any]) -> bool:
        raise ValueError("nope")

    cfg = make_config(
        transitions=[
            Transition("idle", "failed", "START", guard=broken),
            Transition("idle", "validating", "START", guard=lambda c, e: True),
        ]
    )
    sm = create_state_machine(cfg, {})
    assert (await sm.dispatch("START")).success
    assert sm.get_state().name == "validating"


async def test_transition_from_several_states_and_dict_form(make_config: Any) -> None:
    cfg = make_config(
        transitions=[
            {"from": "idle", "to": "validating", "event": "START"},
            {"from": ["validating", "deploying"], "to": "failed", "event": "FAIL"},
        ]
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    assert (await sm.dispatch("FAIL")).success
    assert sm.get_state().name == "failed"


# --- how dispatch reads events ----------------------------------------------------------


async def test_event_name_is_stamped_with_the_machine_clock(make_config: Any, clock: Any) -> None:
    seen: list[Event[Any]] = []
    cfg = make_config(
        transitions=[
            Transition("idle", "validating", "START", guard=lambda c, e: seen.append(e) or True)
        ]
    )
    sm = create_state_machine(cfg, {})
    await clock.sleep(42)
    await sm.dispatch("START")
    assert seen[0].type == "START" and seen[0].payload is None
    assert seen[0].timestamp == clock.now() == datetime(2025, 1, 1, 0, 0, 42, tzinfo=UTC)


async def test_event_without_timestamp_takes_the_machine_clock(
    make_config: Any, clock: Any
) -> None:
    seen: list[Event[Any]] = []
    cfg = make_config(
        transitions=[
            Transition("idle", "validating", "START", guard=lambda c, e: seen.append(e) or True)
        ]
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch(Event("START", payload=1))
    assert seen[0].timestamp == clock.now()
    assert seen[0].payload == 1


async def test_explicit_timestamps_are_kept(make_config: Any) -> None:
    seen: list[Event[Any]] = []
    cfg = make_config(
        transitions=[
            Transition("idle", "validating", "START", guard=lambda c, e: seen.append(e) or True),
            Transition(
                "validating", "deploying", "VALIDATED", guard=lambda c, e: seen.append(e) or True
            ),
        ]
    )
    sm = create_state_machine(cfg, {})
    t1 = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    t2 = t1 + timedelta(hours=1)
    await sm.dispatch(Event("START", timestamp=t1))
    await sm.dispatch({"type": "VALIDATED", "timestamp": t2, "payload": [1], "correlation_id": "x"})
    assert [e.timestamp for e in seen] == [t1, t2]
    assert (seen[1].payload, seen[1].correlation_id) == ([1], "x")


@pytest.mark.parametrize(
    "bad",
    [
        42,
        None,
        b"START",
        "",
        {"payload": 1},
        {"type": ""},
        {"type": 7},
        {"type": "START", "bogus": 1},
        {"type": "START", "timestamp": "yesterday"},
        {"type": "START", "timestamp": datetime(2025, 1, 1)},  # naive
        {"type": "START", "correlation_id": 5},
        Event("", timestamp=datetime(2025, 1, 1, tzinfo=UTC)),
        Event("START", timestamp=datetime(2025, 1, 1)),  # naive
        Event("START", correlation_id=5),  # type: ignore[arg-type]
        Event(123),  # type: ignore[arg-type]
    ],
    ids=repr,
)
async def test_malformed_events_raise_invalid_event(make_config: Any, bad: Any) -> None:
    sm = create_state_machine(make_config(), {})
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch(bad)
    assert info.value.code == ErrorCode.INVALID_EVENT
    assert sm.get_state().name == "idle" and sm.version == 0


async def test_event_with_empty_type_and_default_timestamp_raises_invalid_event(
    make_config: Any,
) -> None:
    sm = create_state_machine(make_config(), {})
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch(Event(""))
    assert info.value.code == ErrorCode.INVALID_EVENT


# --- rule 8: one at a time --------------------------------------------------------------


def _tracing_effect(name: str, trace: list[str], seconds: float) -> Any:
    async def run(ctx: Any, state: Any) -> None:
        trace.append(f"begin {name}")
        await deploysm.sleep(seconds)
        trace.append(f"end {name}")

    return effect().execute(run).set_idempotent(True).build()


async def test_concurrent_dispatches_never_interleave(make_config: Any) -> None:
    trace: list[str] = []
    cfg = make_config(
        effects={
            "validating": _tracing_effect("validating", trace, 5),
            "deploying": _tracing_effect("deploying", trace, 1),
            "completed": _tracing_effect("completed", trace, 3),
        }
    )
    sm = create_state_machine(cfg, {})
    results = await asyncio.gather(
        sm.dispatch("START"), sm.dispatch("VALIDATED"), sm.dispatch("DEPLOYED")
    )
    assert [r.success for r in results] == [True, True, True]
    assert trace == [
        "begin validating",
        "end validating",
        "begin deploying",
        "end deploying",
        "begin completed",
        "end completed",
    ]
    assert [s.name for s in sm.get_history()] == ["idle", "validating", "deploying"]


async def test_concurrent_dispatches_run_in_arrival_order(make_config: Any) -> None:
    trace: list[str] = []
    cfg = make_config(effects={"validating": _tracing_effect("validating", trace, 2)})
    sm = create_state_machine(cfg, {})
    # VALIDATED arrives first: from idle it has no transition, then START runs.
    first = asyncio.ensure_future(sm.dispatch("VALIDATED"))
    second = asyncio.ensure_future(sm.dispatch("START"))
    r1, r2 = await asyncio.gather(first, second)
    assert (r1.success, r2.success) == (False, True)
    assert sm.get_state().name == "validating"


# --- rule 15: context validation --------------------------------------------------------


async def test_validate_context_runs_before_every_effect(make_config: Any) -> None:
    order: list[str] = []
    ctx = {"ok": True}

    async def check(c: Any) -> bool:
        assert c is ctx
        order.append("validate")
        return True

    def run(c: Any, s: Any) -> None:
        order.append(f"effect {s.name}")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg = make_config(effects={"validating": eff, "deploying": eff}, validate_context=check)
    sm = create_state_machine(cfg, ctx)
    await sm.dispatch("START")
    await sm.dispatch("VALIDATED")
    assert order == ["validate", "effect validating", "validate", "effect deploying"]


@pytest.mark.parametrize("verdict", [False, None, 0, ""])
async def test_falsy_context_validation_refuses_the_transition(
    make_config: Any, verdict: Any
) -> None:
    ran: list[str] = []
    eff = effect().execute(lambda c, s: ran.append("x")).set_idempotent(True).build()
    ctx = {"replicas": -1}
    cfg = make_config(effects={"validating": eff}, validate_context=lambda c: verdict)
    sm = create_state_machine(cfg, ctx)
    before = sm.get_state()
    result = await sm.dispatch(Event("START", payload={"p": 1}))
    assert result.success is False
    assert isinstance(result.error, StateMachineError)
    assert result.error.code == ErrorCode.INVALID_CONTEXT
    assert ran == []
    assert sm.get_state() is before and before.data == {}
    assert ctx == {"replicas": -1} and sm.get_history() == []


async def test_raising_context_validation_refuses_with_its_cause(make_config: Any) -> None:
    boom = ValueError("replicas must be positive")

    def check(c: Any) -> bool:
        raise boom

    sm = create_state_machine(make_config(validate_context=check), {})
    result = await sm.dispatch("START")
    assert result.success is False
    assert result.error is not None and result.error.code == ErrorCode.INVALID_CONTEXT
    assert result.error.__cause__ is boom
    assert sm.get_state().name == "idle"


# --- rule 16: troubleshooting -----------------------------------------------------------


async def test_available_events_and_transitions_follow_the_current_state(
    make_config: Any,
) -> None:
    sm = create_state_machine(make_config(), {})
    assert sm.available_events() == ["START"]
    assert [(t.source, t.to, t.event) for t in sm.available_transitions()] == [
        ("idle", "validating", "START")
    ]
    await sm.dispatch("START")
    assert sm.available_events() == ["VALIDATED", "FAIL"]
    assert [(t.source, t.to, t.event) for t in sm.available_transitions()] == [
        ("validating", "deploying", "VALIDATED"),
        ("validating", "failed", "FAIL"),
    ]
    await sm.dispatch("FAIL")
    assert sm.available_events() == []
    assert sm.available_transitions() == []
