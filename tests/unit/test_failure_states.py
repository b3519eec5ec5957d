"""Failure states: a final state that means the workflow failed makes the machine
``failed``, not ``completed``; and a config is checked when it is built."""

from __future__ import annotations

from typing import Any

import pytest

import deploysm
from conftest import simple_config
from deploysm import (
    ErrorCode,
    RetryPolicy,
    StateMachineConfig,
    StateMachineError,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.stores import MemoryStore


def _hooks(calls: list[str]) -> dict[str, Any]:
    return {
        "on_complete": lambda state, ctx, metrics: calls.append(f"complete {state.name}"),
        "on_error": lambda error, state, ctx: calls.append(f"error {state.name}"),
    }


async def test_entering_the_seeds_failed_state_fails_the_machine() -> None:
    calls: list[str] = []
    store = MemoryStore()
    sm = create_state_machine(simple_config(hooks=_hooks(calls), store=store), {}, "m1")
    await sm.dispatch("START")
    result = await sm.dispatch("FAIL")
    assert result.success and sm.get_state().name == "failed"
    assert sm.status == "failed"
    metrics = sm.get_metrics()
    assert (metrics.is_failed, metrics.is_complete) == (True, False)
    assert calls == []  # no on_complete: it did not complete; no on_error: nothing raised
    snap = await sm.serialize()
    assert snap.status == "failed"
    assert snap.last_error is not None
    assert snap.last_error["message"] == "entered failure state 'failed' from 'validating' on FAIL"
    assert [i.machine_id for i in await store.list("failed")] == ["m1"]
    assert [e.kind for e in await store.journal("m1")][-1] == "machine_failed"
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch("START")
    assert info.value.code == ErrorCode.NOT_ACTIVE


async def test_a_completed_final_state_still_completes() -> None:
    calls: list[str] = []
    sm = create_state_machine(simple_config(hooks=_hooks(calls)), {})
    for event in ("START", "VALIDATED", "DEPLOYED"):
        assert (await sm.dispatch(event)).success
    assert sm.status == "completed" and calls == ["complete completed"]
    assert (sm.get_metrics().is_complete, sm.get_metrics().is_failed) == (True, False)


async def test_the_error_that_made_it_give_up_is_kept_as_the_last_error() -> None:
    def boom(ctx: Any, state: Any) -> None:
        raise RuntimeError("registry down")

    eff = effect().execute(boom).set_idempotent(True).build()
    cfg = simple_config(effects={"deploying": eff}, retry_policy=RetryPolicy(max_attempts=2))
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    assert not (await sm.dispatch("VALIDATED")).success
    assert sm.status == "active"  # the state stays validating, waiting for an event
    before = (await sm.serialize()).last_error
    assert before is not None and "registry down" in before["message"]
    assert (await sm.dispatch("FAIL")).success
    assert sm.status == "failed"
    assert (await sm.serialize()).last_error == before


async def test_failure_states_names_other_final_states() -> None:
    cfg = simple_config(failure_states=["completed"])
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    await sm.dispatch("FAIL")
    assert sm.status == "completed"  # "failed" is no failure state here
    sm = create_state_machine(cfg, {})
    for event in ("START", "VALIDATED", "DEPLOYED"):
        await sm.dispatch(event)
    assert sm.status == "failed"


async def test_an_empty_list_says_no_final_state_is_a_failure() -> None:
    sm = create_state_machine(simple_config(failure_states=[]), {})
    await sm.dispatch("START")
    await sm.dispatch("FAIL")
    assert sm.status == "completed"


async def test_failed_is_no_failure_state_when_it_is_not_final() -> None:
    transitions = [*simple_config().transitions, Transition("failed", "idle", "START")]
    sm = create_state_machine(simple_config(transitions=transitions), {})
    await sm.dispatch("START")
    await sm.dispatch("FAIL")
    assert sm.status == "active"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["deploying"], "failure_states names 'deploying', which is not a final state"),
        (["ghost"], "failure_states names unknown state 'ghost'"),
        ("failed", "failure_states must be a list of state names"),
    ],
)
def test_failure_states_must_be_final_states(value: Any, problem: str) -> None:
    raw: dict[str, Any] = {
        "id": "x",
        "initial_state": "idle",
        "states": ["idle", "deploying", "failed"],
        "events": ["GO", "FAIL"],
        "transitions": [
            {"from": "idle", "to": "deploying", "event": "GO"},
            {"from": "deploying", "to": "failed", "event": "FAIL"},
        ],
        "failure_states": value,
    }
    with pytest.raises(StateMachineError) as info:
        create_state_machine(raw, {})
    assert info.value.code == ErrorCode.INVALID_CONFIG
    assert problem in info.value.problems
    assert problem in deploysm.validate(raw).errors


# -- a config is checked when it is built


def test_a_bad_dataclass_config_is_refused_when_built() -> None:
    with pytest.raises(StateMachineError) as info:
        StateMachineConfig(
            id="bad",
            initial_state="nowhere",
            states=["idle"],
            events=["GO"],
            transitions=[Transition("idle", "ghost", "GO")],
        )
    assert info.value.code == ErrorCode.INVALID_CONFIG
    assert info.value.problems == [
        "initial_state 'nowhere' is not one of the states",
        "transitions[0] 'to' names unknown state 'ghost'",
    ]


def test_a_config_built_in_steps_and_the_mapping_form_still_work() -> None:
    cfg = simple_config()
    cfg.store = MemoryStore()  # set after building, as the demo does
    create_state_machine(cfg, {})
    raw = {
        "id": "m",
        "initial_state": "a",
        "states": ["a", "b"],
        "events": ["GO"],
        "transitions": [{"from": "a", "to": "b", "event": "GO"}],
        "retry_policy": {"max_attempts": 2},
        "hooks": {"on_log": lambda *a: None},
    }
    create_state_machine(raw, {})
    StateMachineConfig(**raw)  # mappings inside the dataclass are accepted too


# -- validate() and compensate()


def test_the_compensated_state_is_not_reported_unreachable() -> None:
    undo = effect().execute(lambda c, s: None).rollback(lambda c, s: None).build()
    cfg = simple_config(
        states=["idle", "validating", "deploying", "completed", "failed", "rolled_back"],
        effects={"deploying": undo},
        compensated_state="rolled_back",
    )
    warnings = deploysm.validate(cfg).warnings
    assert not [w for w in warnings if "rolled_back" in w], warnings


def test_a_state_nothing_leads_to_is_still_reported_unreachable() -> None:
    cfg = simple_config(states=["idle", "validating", "deploying", "completed", "failed", "x"])
    assert "state 'x' is unreachable from 'idle'" in deploysm.validate(cfg).warnings


# -- the guard type


def test_guard_is_exported_and_describes_context_and_event() -> None:
    seen: list[Any] = []

    def guard(ctx: dict[str, Any], event: deploysm.Event[str]) -> bool:
        seen.append((ctx, event.type))
        return True

    typed: deploysm.Guard = guard
    assert "Guard" in deploysm.__all__
    cfg = simple_config(transitions=[Transition("idle", "validating", "START", guard=typed)])
    sm = create_state_machine(cfg, {"n": 1})

    async def go() -> None:
        assert (await sm.dispatch("START")).success

    import asyncio

    asyncio.run(go())
    assert seen == [({"n": 1}, "START")]
