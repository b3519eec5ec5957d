"""SPEC 2 rules 2 (intent first), 5 (commit), 13 (metrics), and final states."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import deploysm
from deploysm import (
    EffectResult,
    ErrorCode,
    Event,
    Hooks,
    State,
    StateMachineError,
    StateMachineMetrics,
    StateMetrics,
    Transition,
    create_state_machine,
    effect,
)

# --- rule 2: intent first ---------------------------------------------------------------


async def test_intent_is_durable_before_each_attempt(
    make_config: Any, fast_retry: Any, persisted: Any
) -> None:
    seen: list[dict[str, Any]] = []

    def run(c: Any, s: State[Any]) -> None:
        snap = persisted.last
        seen.append(snap)
        assert snap["in_flight"] is not None, "effect ran before its intent was written"
        assert snap["in_flight"]["attempt"] == s.attempts
        assert snap["in_flight"]["idempotency_key"] == s.idempotency_key
        if s.attempts < 3:
            raise RuntimeError("not yet")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg = make_config(
        effects={"validating": eff}, retry_policy=fast_retry(3), persist_state=persisted
    )
    sm = create_state_machine(cfg, {})
    assert (await sm.dispatch(Event("START", payload={"sha": "abc"}))).success
    assert len(seen) == 3
    flight = seen[0]["in_flight"]
    assert (flight["from_state"], flight["to_state"]) == ("idle", "validating")
    assert flight["event"]["type"] == "START" and flight["event"]["payload"] == {"sha": "abc"}
    assert all(s["current_state"]["name"] == "idle" for s in seen)
    assert persisted.last["in_flight"] is None  # the commit cleared it


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_effect_whose_intent_cannot_be_written_is_not_run(
    make_config: Any, persisted: Any, is_async: bool
) -> None:
    ran: list[int] = []
    broken = {"on": True}
    good = persisted

    def write(snapshot: Any) -> None:
        if broken["on"]:
            raise OSError("disk full")
        good(snapshot)

    async def write_async(snapshot: Any) -> None:
        write(snapshot)

    eff = effect().execute(lambda c, s: ran.append(s.attempts)).set_idempotent(True).build()
    cfg = make_config(effects={"validating": eff}, persist_state=write_async if is_async else write)
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert result.success is False
    assert isinstance(result.error, StateMachineError)
    assert ran == []
    assert sm.get_state().name == "idle" and sm.get_history() == []
    broken["on"] = False  # storage is back: the machine was left consistent
    assert (await sm.dispatch("START")).success
    assert ran == [1]


async def test_retry_whose_intent_cannot_be_written_is_not_run(
    make_config: Any, fast_retry: Any, persisted: Any
) -> None:
    ran: list[int] = []

    def write(snapshot: Any) -> None:
        if persisted.snapshots:  # only the first intent gets through
            raise OSError("disk full")
        persisted(snapshot)

    def run(c: Any, s: State[Any]) -> None:
        ran.append(s.attempts)
        raise RuntimeError("flaky")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg = make_config(effects={"validating": eff}, retry_policy=fast_retry(3), persist_state=write)
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert result.success is False
    assert ran == [1]  # attempt 2's intent was never durable
    assert sm.get_state().name == "idle"


# --- rule 5: commit ---------------------------------------------------------------------


async def test_commit_order_exit_state_transition_enter_persist_result(
    make_config: Any, persisted: Any
) -> None:
    trace: list[str] = []
    persisted.log = trace
    sm: Any = None

    def on_exit(state: State[Any], ctx: Any) -> None:
        assert sm.get_state() is state
        trace.append(f"exit {state.name}")

    async def on_transition(a: State[Any], b: State[Any], ev: Event[Any], ctx: Any) -> None:
        assert sm.get_state() is b and sm.get_history()[-1] is a
        trace.append(f"transition {a.name}->{b.name} on {ev.type}")

    def on_enter(state: State[Any], ctx: Any) -> None:
        assert sm.get_state() is state
        trace.append(f"enter {state.name}")

    async def run(c: Any, s: State[Any]) -> None:
        trace.append("effect")

    hooks = Hooks(on_state_exit=on_exit, on_transition=on_transition, on_state_enter=on_enter)
    eff = effect().execute(run).set_idempotent(True).build()
    cfg = make_config(effects={"validating": eff}, hooks=hooks, persist_state=persisted)
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    trace.append("result")
    effect_at = trace.index("effect")
    assert "persist" in trace[:effect_at]  # the intent
    assert trace[effect_at:] == [
        "effect",
        "exit idle",
        "transition idle->validating on START",
        "enter validating",
        "persist",  # the commit
        "result",
    ]
    assert persisted.last["current_state"]["name"] == "validating"


async def test_failed_effect_commits_nothing(make_config: Any) -> None:
    calls: list[str] = []
    hooks = Hooks(
        on_state_exit=lambda s, c: calls.append("exit"),
        on_transition=lambda a, b, e, c: calls.append("transition"),
        on_state_enter=lambda s, c: calls.append("enter"),
    )
    eff = effect().execute(lambda c, s: {"success": False}).set_idempotent(True).build()
    sm = create_state_machine(make_config(effects={"validating": eff}, hooks=hooks), {})
    assert not (await sm.dispatch("START")).success
    assert calls == []


async def test_new_state_records_payload_message_and_metadata(make_config: Any, clock: Any) -> None:
    eff = (
        effect()
        .execute(lambda c, s: EffectResult(True, "validated", {"checks": 7}))
        .set_idempotent(True)
        .build()
    )
    sm = create_state_machine(make_config(effects={"validating": eff}), {})
    a = sm.get_state()
    await clock.sleep(3)
    result = await sm.dispatch(Event("START", payload={"version": "1.2.3"}))
    b = sm.get_state()
    assert result.success and result.new_state is b
    assert b.name == "validating"
    assert b.data["payload"] == {"version": "1.2.3"}
    assert b.data["message"] == "validated"
    assert b.data["metadata"] == {"checks": 7}
    assert b.timestamp == clock.now()
    assert sm.get_history() == [a]
    await sm.dispatch(Event("VALIDATED", payload=[1, 2]))  # no effect: the payload still lands
    assert sm.get_state().data["payload"] == [1, 2]


async def test_version_grows_by_one_for_every_durable_change(
    make_config: Any, fast_retry: Any, persisted: Any
) -> None:
    flaky = effect().execute(lambda c, s: {"success": s.attempts > 1}).set_idempotent(True).build()
    broken = effect().execute(lambda c, s: {"success": False}).rollback(lambda c, s: None).build()
    cfg = make_config(
        effects={"validating": flaky, "completed": broken},
        retry_policy=fast_retry(2),
        persist_state=persisted,
    )
    sm = create_state_machine(cfg, {})
    assert sm.version == 0
    await sm.dispatch("START")  # intent, retry, commit
    await sm.dispatch("VALIDATED")  # commit only
    await sm.dispatch("DEPLOYED")  # intent, retry, failure
    await sm.complete()
    versions = [s["version"] for s in persisted.snapshots]
    assert versions == list(range(1, len(versions) + 1))
    assert sm.version == versions[-1]
    assert len(versions) >= 6
    assert [s.version for s in sm.get_history()[1:]] == sorted(
        s.version for s in sm.get_history()[1:]
    )


async def test_committed_state_carries_the_machine_version(
    make_config: Any, persisted: Any
) -> None:
    sm = create_state_machine(make_config(persist_state=persisted), {})
    await sm.dispatch("START")
    assert sm.get_state().version == sm.version == persisted.last["version"]
    assert persisted.last["current_state"]["version"] == sm.version


# --- rule 13: metrics -------------------------------------------------------------------


def _looping_config(make_config: Any, **kw: Any) -> Any:
    base = make_config()
    return make_config(
        events=[*base.events, "RESET"],
        transitions=[*base.transitions, Transition("validating", "idle", "RESET")],
        **kw,
    )


async def test_metrics_keep_one_entry_per_visit(
    make_config: Any, fast_retry: Any, clock: Any
) -> None:
    first = {"fail": True}

    async def run(c: Any, s: State[Any]) -> Any:
        await deploysm.sleep(2)
        if first["fail"]:
            first["fail"] = False
            raise RuntimeError("cold cache")
        return None

    eff = effect().execute(run).set_idempotent(True).build()
    sm = create_state_machine(
        _looping_config(make_config, effects={"validating": eff}, retry_policy=fast_retry(2)), {}
    )
    await sm.dispatch("START")  # 2 s fail, 0.1 s delay, 2 s ok -> enters at 4.1 s
    await clock.sleep(10)
    await sm.dispatch("RESET")  # 14.1 s
    await sm.dispatch("START")  # 2 s ok -> 16.1 s
    m = sm.get_metrics()
    assert [v.state for v in m.states] == ["idle", "validating", "idle", "validating"]
    assert [(v.attempts, v.errors) for v in m.states] == [(0, 0), (2, 1), (0, 0), (1, 0)]
    assert [v.duration_ms for v in m.states] == pytest.approx([4100, 10000, 2000, None])
    assert m.states[-1].exited_at is None
    assert (m.total_transitions, m.total_attempts, m.total_retries, m.total_errors) == (3, 3, 1, 1)
    assert m.current_state == "validating"
    assert m.total_duration_ms == pytest.approx(16100)


async def test_failed_transition_adds_errors_to_the_current_visit(
    make_config: Any, fast_retry: Any
) -> None:
    eff = effect().execute(lambda c, s: {"success": False}).set_idempotent(True).build()
    sm = create_state_machine(
        make_config(effects={"validating": eff}, retry_policy=fast_retry(2)), {}
    )
    await sm.dispatch("START")
    m = sm.get_metrics()
    assert [(v.state, v.errors) for v in m.states] == [("idle", 2)]
    assert (m.total_attempts, m.total_errors, m.total_retries) == (2, 2, 1)


async def test_on_metric_reports_exit_then_enter(make_config: Any, clock: Any) -> None:
    metrics: list[StateMetrics] = []

    async def on_metric(metric: StateMetrics) -> None:
        metrics.append(metric)

    sm = create_state_machine(make_config(hooks={"on_metric": on_metric}), {})
    await clock.sleep(5)
    await sm.dispatch("START")
    assert [(v.state, v.exited_at is not None) for v in metrics] == [
        ("idle", True),
        ("validating", False),
    ]
    assert metrics[0].duration_ms == pytest.approx(5000)


async def test_entering_the_compensated_state_reports_metrics(make_config: Any) -> None:
    metrics: list[tuple[str, bool]] = []
    undoable = effect().execute(lambda c, s: None).rollback(lambda c, s: None).build()
    cfg = make_config(
        effects={"validating": undoable},
        compensated_state="failed",
        hooks={"on_metric": lambda m: metrics.append((m.state, m.exited_at is not None))},
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    metrics.clear()
    await sm.compensate()
    assert sm.get_state().name == "failed"
    assert [v.state for v in sm.get_metrics().states] == ["idle", "validating", "failed"]
    assert metrics == [("validating", True), ("failed", False)]  # exit, then enter


async def test_get_metrics_returns_a_copy(make_config: Any) -> None:
    sm = create_state_machine(make_config(), {})
    await sm.dispatch("START")
    before = sm.get_metrics()
    snapshot = dataclasses.asdict(before)
    before.states.append(StateMetrics("ghost", before.states[0].entered_at))
    before.states[0].errors = 99
    before.total_transitions = 42
    before.current_state = "ghost"
    after = sm.get_metrics()
    assert after is not before
    assert dataclasses.asdict(after) == snapshot


# --- final states -----------------------------------------------------------------------


async def test_reaching_a_state_without_exits_completes_the_machine(
    make_config: Any, persisted: Any
) -> None:
    ctx = {"id": 9}
    completions: list[tuple[State[Any], Any, StateMachineMetrics]] = []
    hooks = Hooks(on_complete=lambda s, c, m: completions.append((s, c, m)))
    sm = create_state_machine(make_config(hooks=hooks, persist_state=persisted), ctx)
    for ev in ("START", "VALIDATED"):
        await sm.dispatch(ev)
        assert completions == [] and not sm.get_metrics().is_complete
    await sm.dispatch("DEPLOYED")
    assert len(completions) == 1
    state, c, metrics = completions[0]
    assert state is sm.get_state() and state.name == "completed" and c is ctx
    assert metrics.is_complete and metrics.current_state == "completed"
    assert sm.get_metrics().is_complete
    assert persisted.last["status"] == "completed"
    assert persisted.last["metrics"]["is_complete"] is True


async def test_configured_final_states_replace_the_default(make_config: Any) -> None:
    done: list[str] = []
    cfg = make_config(
        final_states=["deploying"], hooks={"on_complete": lambda s, c, m: done.append(s.name)}
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    await sm.dispatch("VALIDATED")
    assert done == ["deploying"]
    assert sm.get_metrics().is_complete
    assert (await sm.serialize()).status == "completed"


async def test_default_final_state_is_not_reached_through_refusals(make_config: Any) -> None:
    sm = create_state_machine(make_config(), {})
    result = await sm.dispatch("DEPLOYED")
    assert result.error is not None and result.error.code == ErrorCode.TRANSITION_ERROR
    assert not sm.get_metrics().is_complete
