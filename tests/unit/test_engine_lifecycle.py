"""SPEC 2 rules 7 (timeouts), 9 (cancel), 10 (compensation), and complete()/fail()."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

import deploysm
from deploysm import (
    ErrorCode,
    Hooks,
    State,
    StateMachineError,
    TimeoutConfig,
    create_state_machine,
    effect,
)

# --- rule 7: effect timeout -------------------------------------------------------------


def _is_timeout(err: BaseException | None) -> bool:
    """SPEC: a deploysm.TimeoutError, or an error with one as its direct cause."""
    return isinstance(err, deploysm.TimeoutError) or isinstance(
        getattr(err, "__cause__", None), deploysm.TimeoutError
    )


def _slow(trace: list[str], seconds: float, *, until_attempt: int = 99) -> Any:
    async def run(c: Any, s: State[Any]) -> None:
        trace.append(f"start {s.attempts}")
        if s.attempts >= until_attempt:
            return
        try:
            await deploysm.sleep(seconds)
        except asyncio.CancelledError:
            trace.append(f"cancelled {s.attempts}")
            raise
        trace.append(f"finished {s.attempts}")

    return run


async def test_effect_timeout_cancels_the_attempt(make_config: Any, clock: Any) -> None:
    trace: list[str] = []
    errors: list[BaseException] = []
    eff = effect().execute(_slow(trace, 60)).set_idempotent(True).build()
    cfg = make_config(
        effects={"validating": eff},
        timeout=TimeoutConfig(effect_timeout_ms=1000),
        hooks=Hooks(on_error=lambda e, s, c: errors.append(e)),
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert trace == ["start 1", "cancelled 1"]
    assert result.success is False
    assert isinstance(result.error, deploysm.TimeoutError)
    assert isinstance(result.error, builtins.TimeoutError)  # deploysm's subclasses the builtin
    assert result.error.code == ErrorCode.TIMEOUT_ERROR
    assert errors == [result.error]
    assert clock.elapsed == pytest.approx(1.0)
    assert sm.get_state().name == "idle"


async def test_timed_out_attempt_is_retried(make_config: Any, fast_retry: Any, clock: Any) -> None:
    trace: list[str] = []
    seen: list[BaseException] = []

    def should_retry(error: BaseException, attempt: int) -> bool:
        seen.append(error)
        return True

    eff = effect().execute(_slow(trace, 60, until_attempt=2)).set_idempotent(True).build()
    cfg = make_config(
        effects={"validating": eff},
        retry_policy=fast_retry(3, should_retry=should_retry),
        timeout={"effect_timeout_ms": 1000},
    )
    sm = create_state_machine(cfg, {})
    assert (await sm.dispatch("START")).success
    assert trace == ["start 1", "cancelled 1", "start 2"]
    assert len(seen) == 1 and isinstance(seen[0], deploysm.TimeoutError)
    assert clock.elapsed == pytest.approx(1.1)  # 1 s timeout + 100 ms delay
    assert sm.get_state().attempts == 2


async def test_last_attempt_timing_out_is_reported_as_timeout(
    make_config: Any, fast_retry: Any
) -> None:
    trace: list[str] = []
    eff = effect().execute(_slow(trace, 60)).rollback(lambda c, s: trace.append("rollback")).build()
    cfg = make_config(
        effects={"validating": eff},
        retry_policy=fast_retry(2),
        timeout=TimeoutConfig(effect_timeout_ms=500),
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert _is_timeout(result.error)
    # a timed-out non-idempotent attempt is rolled back like any failed one
    assert trace == ["start 1", "cancelled 1", "rollback", "start 2", "cancelled 2", "rollback"]


# --- rule 7: transition timeout ---------------------------------------------------------


async def test_transition_timeout_bounds_attempts_and_delays(make_config: Any, clock: Any) -> None:
    attempts: list[float] = []
    errors: list[BaseException] = []

    def run(c: Any, s: State[Any]) -> None:
        attempts.append(clock.elapsed)
        raise RuntimeError("still down")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg = make_config(
        effects={"validating": eff},
        retry_policy=deploysm.RetryPolicy(10, 1000, 60_000, 2.0, 0.0),
        timeout=TimeoutConfig(transition_timeout_ms=2500),
        hooks=Hooks(on_error=lambda e, s, c: errors.append(e)),
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert attempts == [0.0, 1.0]  # the third attempt (at 3 s) is past the deadline
    assert clock.elapsed == pytest.approx(2.5)
    assert _is_timeout(result.error)
    assert errors == [result.error]
    assert sm.get_state().name == "idle"


async def test_transition_timeout_cuts_a_running_effect_and_rolls_it_back(
    make_config: Any, clock: Any
) -> None:
    trace: list[str] = []
    eff = (
        effect().execute(_slow(trace, 100)).rollback(lambda c, s: trace.append("rollback")).build()
    )
    cfg = make_config(
        effects={"validating": eff}, timeout=TimeoutConfig(transition_timeout_ms=5000)
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert trace == ["start 1", "cancelled 1", "rollback"]
    assert isinstance(result.error, deploysm.TimeoutError)
    assert clock.elapsed == pytest.approx(5.0)


# --- rule 7: state timeout --------------------------------------------------------------


async def test_state_timeout_dispatches_the_timeout_event(make_config: Any, clock: Any) -> None:
    errors: list[BaseException] = []
    cfg = make_config(
        timeout=TimeoutConfig(state_timeout_ms=5000, timeout_event="FAIL"),
        hooks=Hooks(on_error=lambda e, s, c: errors.append(e)),
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    await clock.sleep(7)
    assert sm.get_state().name == "failed"
    assert sm.get_state().data["event"] == "FAIL"
    assert [s.name for s in sm.get_history()] == ["idle", "validating"]
    assert len(errors) == 1 and isinstance(errors[0], deploysm.TimeoutError)


async def test_state_timeout_reports_an_error_and_restarts_on_each_state(
    make_config: Any, clock: Any
) -> None:
    errors: list[tuple[BaseException, str, float]] = []
    hooks = Hooks(on_error=lambda e, s, c: errors.append((e, s.name, clock.elapsed)))
    cfg = make_config(timeout=TimeoutConfig(state_timeout_ms=5000), hooks=hooks)
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    await clock.sleep(3)
    await sm.dispatch("VALIDATED")  # at 3 s: the validating timer must not fire at 5 s
    await clock.sleep(3)
    assert errors == []
    await clock.sleep(3)
    assert [(s, t) for _, s, t in errors] == [("deploying", pytest.approx(8.0))]
    assert isinstance(errors[0][0], deploysm.TimeoutError)
    assert sm.get_state().name == "deploying"  # no timeout event configured
    await sm.dispatch("DEPLOYED")  # final: no timer
    await clock.sleep(100)
    assert len(errors) == 1


# --- rule 9: cancel ---------------------------------------------------------------------


def _blocking_effect(trace: list[str], started: asyncio.Event, *, idempotent: bool) -> Any:
    async def run(c: Any, s: State[Any]) -> None:
        trace.append("effect started")
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        except asyncio.CancelledError:
            trace.append("effect cancelled")
            raise

    async def undo(c: Any, s: State[Any]) -> None:
        trace.append("rollback")

    return effect().execute(run).rollback(undo).set_idempotent(idempotent).build()


async def _cancel_mid_effect(sm: Any, started: asyncio.Event) -> Any:
    task = asyncio.ensure_future(sm.dispatch("START"))
    await started.wait()
    await sm.cancel()
    result = await task  # never raises CancelledError
    assert not task.cancelled()
    return result


@pytest.mark.parametrize("idempotent", [False, True], ids=["non-idempotent", "idempotent"])
async def test_cancel_stops_the_running_effect_and_rolls_it_back(
    make_config: Any, persisted: Any, idempotent: bool
) -> None:
    trace: list[str] = []
    started = asyncio.Event()
    ctx = {"id": 1}
    cancels: list[tuple[State[Any], Any]] = []

    def on_cancel(state: State[Any], c: Any) -> None:
        trace.append("on_cancel")
        cancels.append((state, c))

    cfg = make_config(
        effects={"validating": _blocking_effect(trace, started, idempotent=idempotent)},
        hooks=Hooks(on_cancel=on_cancel),
        persist_state=persisted,
    )
    sm = create_state_machine(cfg, ctx)
    result = await _cancel_mid_effect(sm, started)
    trace.append("dispatch returned")
    rollback = [] if idempotent else ["rollback"]  # an idempotent effect is not undone
    assert trace == [
        "effect started",
        "effect cancelled",
        *rollback,
        "on_cancel",
        "dispatch returned",
    ]
    assert result.success is False
    assert isinstance(result.error, StateMachineError)
    assert result.error.code == ErrorCode.CANCELLED
    assert sm.get_state().name == "idle"
    assert cancels == [(sm.get_state(), ctx)]
    assert persisted.last["status"] == "cancelled"
    assert sm.get_metrics().is_cancelled
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch("START")
    assert info.value.code == ErrorCode.CANCELLED


async def test_cancelled_transition_is_not_left_in_flight(make_config: Any, persisted: Any) -> None:
    trace: list[str] = []
    started = asyncio.Event()
    cfg = make_config(
        effects={"validating": _blocking_effect(trace, started, idempotent=False)},
        persist_state=persisted,
    )
    sm = create_state_machine(cfg, {})
    await _cancel_mid_effect(sm, started)
    assert trace.count("rollback") == 1
    # the attempt was stopped and rolled back: nothing is in flight any more, so a
    # recovery must not find it and roll it back (or run it) a second time
    assert persisted.last["status"] == "cancelled"
    assert persisted.last["in_flight"] is None
    assert (await sm.serialize()).in_flight is None


async def test_cancel_during_a_retry_delay_runs_no_more_attempts(
    make_config: Any, fast_retry: Any
) -> None:
    trace: list[str] = []
    started = asyncio.Event()

    def run(c: Any, s: State[Any]) -> None:
        trace.append(f"attempt {s.attempts}")
        started.set()
        raise RuntimeError("flaky")

    eff = effect().execute(run).rollback(lambda c, s: trace.append("rollback")).build()
    cfg = make_config(
        effects={"validating": eff},
        retry_policy=fast_retry(3, initial_delay_ms=60_000, max_delay_ms=60_000),
    )
    sm = create_state_machine(cfg, {})
    result = await _cancel_mid_effect(sm, started)
    assert result.error is not None and result.error.code == ErrorCode.CANCELLED
    assert trace == ["attempt 1", "rollback"]


async def test_cancel_while_idle_calls_on_cancel_and_refuses_events(
    make_config: Any, persisted: Any
) -> None:
    cancels: list[str] = []

    async def on_cancel(state: State[Any], c: Any) -> None:
        cancels.append(state.name)

    sm = create_state_machine(
        make_config(hooks=Hooks(on_cancel=on_cancel), persist_state=persisted), {}
    )
    await sm.dispatch("START")
    await sm.cancel()
    assert cancels == ["validating"]
    assert persisted.last["status"] == "cancelled"
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch("VALIDATED")
    assert info.value.code == ErrorCode.CANCELLED
    assert sm.get_state().name == "validating"


@pytest.mark.parametrize("caller", ["effect", "on_state_enter", "on_error"])
async def test_cancel_called_from_inside_the_transition(make_config: Any, caller: str) -> None:
    box: dict[str, Any] = {}
    cancels: list[str] = []

    async def cancel_now(*args: Any) -> None:
        await box["sm"].cancel()

    def run(c: Any, s: State[Any]) -> Any:
        return {"success": caller != "on_error"}

    execute = cancel_now if caller == "effect" else run
    eff = effect().execute(execute).set_idempotent(True).build()
    hooks: dict[str, Any] = {"on_cancel": lambda s, c: cancels.append(s.name)}
    if caller != "effect":
        hooks[caller] = cancel_now
    sm = create_state_machine(make_config(effects={"validating": eff}, hooks=hooks), {})
    box["sm"] = sm

    async def caller_side() -> None:
        await sm.dispatch("START")
        await asyncio.sleep(0)  # a cancellation left pending on this task would land here

    task = asyncio.ensure_future(caller_side())
    await asyncio.wait({task}, timeout=1)  # a guard against a deadlock, not a timing check
    assert task.done(), "cancel() from inside the machine's own transition deadlocked"
    assert not task.cancelled(), "CancelledError escaped to the caller of dispatch()"
    assert task.exception() is None
    assert len(cancels) == 1
    assert (await sm.serialize()).status == "cancelled"
    with pytest.raises(StateMachineError) as info:
        await sm.dispatch("FAIL")
    assert info.value.code == ErrorCode.CANCELLED


# --- rule 10: compensation --------------------------------------------------------------


def _saga_config(make_config: Any, trace: list[tuple[str, str | None]], **kw: Any) -> Any:
    """validating and deploying are undoable; completed is idempotent (never compensated)."""

    def build(name: str) -> Any:
        undo = effect().execute(lambda c, s: None)
        undo = undo.rollback(lambda c, s: trace.append((name, s.idempotency_key)))
        return undo.set_idempotent(name == "completed").build()

    return make_config(
        effects={n: build(n) for n in ("validating", "deploying", "completed")}, **kw
    )


async def test_compensate_undoes_committed_effects_newest_first(
    make_config: Any, persisted: Any
) -> None:
    trace: list[tuple[str, str | None]] = []
    sm = create_state_machine(_saga_config(make_config, trace, persist_state=persisted), {})
    keys = {}
    for ev in ("START", "VALIDATED", "DEPLOYED"):
        await sm.dispatch(ev)
        keys[sm.get_state().name] = sm.get_state().idempotency_key
    writes_before = len(persisted.snapshots)
    result = await sm.compensate()
    assert trace == [("deploying", keys["deploying"]), ("validating", keys["validating"])]
    assert result.success and result.compensated == ["deploying", "validating"]
    assert sm.get_state().name == "completed"  # no compensated_state configured
    assert sm.get_metrics().total_compensations == 2
    remaining = [len(s["committed_effects"]) for s in persisted.snapshots[writes_before:]]
    assert remaining[:2] == [1, 0]  # each undo is durable on its own
    await sm.compensate()  # nothing left to undo
    assert len(trace) == 2


async def test_compensate_enters_the_compensated_state(make_config: Any) -> None:
    trace: list[tuple[str, str | None]] = []
    sm = create_state_machine(_saga_config(make_config, trace, compensated_state="failed"), {})
    await sm.dispatch("START")
    await sm.dispatch("VALIDATED")
    await sm.compensate()
    assert [name for name, _ in trace] == ["deploying", "validating"]
    assert sm.get_state().name == "failed"
    assert [s.name for s in sm.get_history()] == ["idle", "validating", "deploying"]


@pytest.mark.parametrize("compensate", [True, False])
async def test_fail_records_the_failure_and_compensates_when_configured(
    make_config: Any, persisted: Any, compensate: bool
) -> None:
    trace: list[tuple[str, str | None]] = []
    errors: list[tuple[BaseException, str]] = []
    hooks = Hooks(on_error=lambda e, s, c: errors.append((e, s.name)))
    cfg = _saga_config(
        make_config, trace, compensate_on_failure=compensate, persist_state=persisted, hooks=hooks
    )
    sm = create_state_machine(cfg, {})
    await sm.dispatch("START")
    await sm.dispatch("VALIDATED")
    boom = RuntimeError("smoke tests failed")
    await sm.fail(boom)
    assert [name for name, _ in trace] == (["deploying", "validating"] if compensate else [])
    assert errors == [(boom, "deploying")]
    assert sm.get_metrics().is_failed and persisted.last["status"] == "failed"
    assert len(persisted.last["committed_effects"]) == (0 if compensate else 2)
    assert sm.get_state().name == "deploying"


async def test_complete_marks_the_machine_complete(make_config: Any, persisted: Any) -> None:
    done: list[tuple[str, bool]] = []

    async def on_complete(state: State[Any], c: Any, metrics: Any) -> None:
        done.append((state.name, metrics.is_complete))

    sm = create_state_machine(
        make_config(hooks=Hooks(on_complete=on_complete), persist_state=persisted), {}
    )
    await sm.dispatch("START")
    version = sm.version
    await sm.complete()
    assert done == [("validating", True)]
    assert sm.get_metrics().is_complete
    assert persisted.last["status"] == "completed"
    assert sm.version == version + 1 == persisted.last["version"]
