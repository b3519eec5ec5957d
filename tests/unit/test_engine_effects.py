"""SPEC 2 rules 3 (effect with retries), 4 (idempotency) and 6 (failure)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

import deploysm
from deploysm import (
    EffectError,
    EffectResult,
    ErrorCode,
    Hooks,
    RetryExhaustedError,
    RetryPolicy,
    State,
    create_state_machine,
    effect,
)


class Boom(Exception):
    pass


def failing_until(succeed_at: int, calls: list[State[Any]], *, is_async: bool = True) -> Any:
    """An execute fn that raises on every attempt before ``succeed_at``."""

    def body(ctx: Any, state: State[Any]) -> Any:
        calls.append(state)
        if state.attempts < succeed_at:
            raise Boom(f"attempt {state.attempts} failed")
        return EffectResult(True, "done", {"attempt": state.attempts})

    if not is_async:
        return body

    async def run(ctx: Any, state: State[Any]) -> Any:
        return body(ctx, state)

    return run


def machine(make_config: Any, eff: Any, ctx: Any = None, **config: Any) -> Any:
    """A simple-flow machine whose ``validating`` state has ``eff``."""
    cfg = make_config(effects={"validating": eff}, **config)
    return create_state_machine(cfg, {} if ctx is None else ctx)


def idempotent(fn: Any) -> Any:
    return effect().execute(fn).set_idempotent(True).build()


# --- rule 3: attempts and retries -------------------------------------------------------


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_raising_attempts_are_retried_until_success(
    make_config: Any, fast_retry: Any, is_async: bool
) -> None:
    calls: list[State[Any]] = []
    eff = idempotent(failing_until(3, calls, is_async=is_async))
    sm = machine(make_config, eff, retry_policy=fast_retry(3))
    result = await sm.dispatch("START")
    assert result.success is True
    assert [s.attempts for s in calls] == [1, 2, 3]
    assert all(s.name == "validating" for s in calls)  # the *target* state
    assert sm.get_state().name == "validating" and sm.get_state().attempts == 3
    assert result.effect_result == EffectResult(True, "done", {"attempt": 3})


async def test_reported_failures_count_as_failed_attempts(
    make_config: Any, fast_retry: Any
) -> None:
    outcomes: list[Any] = [
        EffectResult(False, "not yet"),
        {"success": False, "message": "still not"},
        {"success": True, "message": "ready"},
    ]
    eff = idempotent(lambda c, s: outcomes[s.attempts - 1])
    sm = machine(make_config, eff, retry_policy=fast_retry(3))
    result = await sm.dispatch("START")
    assert result.success
    assert sm.get_state().attempts == 3
    assert sm.get_state().data["message"] == "ready"


@pytest.mark.parametrize(
    "refusal",
    [
        EffectResult(False, "fatal: quota", can_retry=False),
        {"success": False, "message": "fatal: quota", "can_retry": False},
    ],
    ids=["EffectResult", "dict"],
)
async def test_can_retry_false_is_not_retried(
    make_config: Any, fast_retry: Any, refusal: Any
) -> None:
    calls: list[int] = []
    eff = idempotent(lambda c, s: calls.append(s.attempts) or refusal)
    sm = machine(make_config, eff, retry_policy=fast_retry(5))
    result = await sm.dispatch("START")
    assert calls == [1]
    assert result.success is False
    assert isinstance(result.error, EffectError)
    assert result.error.code == ErrorCode.EFFECT_ERROR
    assert "fatal: quota" in str(result.error)
    assert result.effect_result is not None and result.effect_result.can_retry is False


async def test_only_retryable_errors_are_retried(make_config: Any, fast_retry: Any) -> None:
    errors = [
        ConnectionError("reset"),
        ConnectionRefusedError("refused"),
        ValueError("bad manifest"),
    ]
    calls: list[int] = []

    def run(c: Any, s: State[Any]) -> None:
        calls.append(s.attempts)
        raise errors[s.attempts - 1]

    eff = idempotent(run)
    cfg = make_config(
        effects={"validating": eff}, retry_policy=fast_retry(5, retryable_errors=(ConnectionError,))
    )
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert calls == [1, 2, 3]  # the ValueError is not retryable
    assert isinstance(result.error, EffectError)
    assert result.error.__cause__ is errors[2]


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_should_retry_sees_the_attempts_error_and_number(
    make_config: Any, fast_retry: Any, is_async: bool
) -> None:
    raised = Boom("flaky registry")
    seen: list[tuple[BaseException, int]] = []

    def run(c: Any, s: State[Any]) -> Any:
        if s.attempts == 1:
            raise raised
        return EffectResult(False, "health check red")

    def decide(error: BaseException, attempt: int) -> bool:
        seen.append((error, attempt))
        return attempt < 2

    async def decide_async(error: BaseException, attempt: int) -> bool:
        return decide(error, attempt)

    eff = idempotent(run)
    retry = fast_retry(5, should_retry=decide_async if is_async else decide)
    sm = machine(make_config, eff, retry_policy=retry)
    result = await sm.dispatch("START")
    assert result.success is False
    assert [a for _, a in seen] == [1, 2]
    assert seen[0][0] is raised
    assert isinstance(seen[1][0], EffectError) and "health check red" in str(seen[1][0])


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_on_retry_runs_before_each_retry_delay(
    make_config: Any, fast_retry: Any, clock: Any, is_async: bool
) -> None:
    ctx: dict[str, Any] = {"n": 0}
    trace: list[tuple[str, int, float]] = []
    retries: list[tuple[int, BaseException, Any, Any]] = []

    async def run(c: Any, s: State[Any]) -> None:
        trace.append(("attempt", s.attempts, clock.elapsed))
        if s.attempts < 3:
            raise Boom(f"#{s.attempts}")

    def on_retry(n: int, error: BaseException, state: Any, c: Any) -> None:
        trace.append(("on_retry", n, clock.elapsed))
        retries.append((n, error, state, c))

    async def on_retry_async(n: int, error: BaseException, state: Any, c: Any) -> None:
        on_retry(n, error, state, c)

    hooks = Hooks(on_retry=on_retry_async if is_async else on_retry)
    eff = idempotent(run)
    cfg = make_config(effects={"validating": eff}, retry_policy=fast_retry(3), hooks=hooks)
    sm = create_state_machine(cfg, ctx)
    assert (await sm.dispatch("START")).success
    assert trace == [
        ("attempt", 1, 0.0),
        ("on_retry", 1, 0.0),
        ("attempt", 2, pytest.approx(0.1)),
        ("on_retry", 2, pytest.approx(0.1)),
        ("attempt", 3, pytest.approx(0.3)),
    ]
    assert [(n, str(e)) for n, e, _, _ in retries] == [(1, "#1"), (2, "#2")]
    assert all(isinstance(s, State) and c is ctx for _, _, s, c in retries)


# --- rule 3: delays on the virtual clock ------------------------------------------------


async def _attempt_gaps_ms(
    make_config: Any, retry: Any, seed: int, attempts: int | None = None
) -> list[float]:
    times: list[Any] = []

    def run(c: Any, s: State[Any]) -> None:
        times.append(deploysm.now())
        raise Boom("down")

    eff = idempotent(run)
    cfg = make_config(effects={"validating": eff}, retry_policy=retry, random=random.Random(seed))
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert isinstance(result.error, RetryExhaustedError)
    assert len(times) == (attempts or retry.max_attempts) == result.error.attempts
    return [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(times)]


async def test_delays_are_exponential_within_proportional_jitter(make_config: Any) -> None:
    retry = RetryPolicy(5, 1000, 30_000, 2.0, 0.2)
    jittered = False
    for seed in range(15):
        gaps = await _attempt_gaps_ms(make_config, retry, seed)
        for n, gap in enumerate(gaps, start=1):
            base = min(1000 * 2.0 ** (n - 1), 30_000)
            assert base * 0.8 - 0.01 <= gap <= base * 1.2 + 0.01, (seed, n, gap)
            jittered |= abs(gap - base) > 1
    assert jittered, "jitter_factor=0.2 never moved a delay"


async def test_delays_are_capped_at_max_delay(make_config: Any) -> None:
    retry = RetryPolicy(4, 1000, 5000, 10.0, 0.5)
    for seed in range(15):
        gaps = await _attempt_gaps_ms(make_config, retry, seed)
        assert 500 - 0.01 <= gaps[0] <= 1500 + 0.01
        for gap in gaps[1:]:  # min(10_000, 5000) * [0.5, 1.5], never above 5000
            assert 2500 - 0.01 <= gap <= 5000 + 0.01


async def test_delays_without_jitter_follow_the_formula_exactly(make_config: Any) -> None:
    gaps = await _attempt_gaps_ms(make_config, RetryPolicy(5, 100, 500, 3.0, 0.0), 1)
    assert gaps == pytest.approx([100, 300, 500, 500], abs=0.01)


async def test_retry_policy_mapping_takes_defaults_for_missing_fields(make_config: Any) -> None:
    (gap,) = await _attempt_gaps_ms(make_config, {"max_attempts": 2}, 1, attempts=2)
    assert 800 - 0.01 <= gap <= 1200 + 0.01  # default 1000 ms, jitter 0.2


# --- rule 4: idempotency ----------------------------------------------------------------


async def test_idempotency_key_is_stable_across_retries(make_config: Any, fast_retry: Any) -> None:
    calls: list[State[Any]] = []
    eff = idempotent(failing_until(3, calls))
    sm = machine(make_config, eff, retry_policy=fast_retry(3))
    await sm.dispatch("START")
    keys = {s.idempotency_key for s in calls}
    assert len(keys) == 1
    (key,) = keys
    assert isinstance(key, str) and key
    assert sm.get_state().idempotency_key == key


async def test_idempotency_key_differs_between_logical_steps(
    make_config: Any, fast_retry: Any
) -> None:
    calls: list[State[Any]] = []
    attempts_left = {"fail": 2}

    def run(c: Any, s: State[Any]) -> None:
        calls.append(s)
        if attempts_left["fail"]:
            attempts_left["fail"] -= 1
            raise Boom("down")

    eff = idempotent(run)
    cfg = make_config(effects={"validating": eff, "deploying": eff}, retry_policy=fast_retry(2))
    sm = create_state_machine(cfg, {})
    assert not (await sm.dispatch("START")).success  # two failed attempts, one step
    assert (await sm.dispatch("START")).success  # a new logical step
    assert (await sm.dispatch("VALIDATED")).success
    keys = [s.idempotency_key for s in calls]
    assert keys[0] == keys[1]
    assert len({keys[0], keys[2], keys[3]}) == 3


@pytest.mark.parametrize(
    ("is_async", "is_idempotent"),
    [(True, False), (False, False), (False, True)],
    ids=["async-rollback", "sync-rollback", "idempotent"],
)
async def test_non_idempotent_effect_is_rolled_back_before_each_retry(
    make_config: Any, fast_retry: Any, is_async: bool, is_idempotent: bool
) -> None:
    trace: list[str] = []
    keys: set[str | None] = set()

    def execute(c: Any, s: State[Any]) -> None:
        trace.append(f"execute {s.attempts}")
        keys.add(s.idempotency_key)
        if s.attempts < 3:
            raise Boom("half applied")

    def undo(c: Any, s: State[Any]) -> None:
        trace.append(f"rollback {s.attempts}")
        keys.add(s.idempotency_key)

    async def undo_async(c: Any, s: State[Any]) -> None:
        undo(c, s)

    eff = effect().execute(execute).rollback(undo_async if is_async else undo)
    sm = machine(make_config, eff.set_idempotent(is_idempotent).build(), retry_policy=fast_retry(3))
    assert (await sm.dispatch("START")).success
    if is_idempotent:  # simply run again, never rolled back
        assert trace == ["execute 1", "execute 2", "execute 3"]
    else:
        assert trace == ["execute 1", "rollback 1", "execute 2", "rollback 2", "execute 3"]
    assert len(keys) == 1


async def test_non_idempotent_effect_without_rollback_is_not_retried(
    make_config: Any, fast_retry: Any
) -> None:
    calls: list[State[Any]] = []
    eff = effect().execute(failing_until(2, calls)).set_idempotent(False).build()
    sm = machine(make_config, eff, retry_policy=fast_retry(3))
    result = await sm.dispatch("START")
    assert len(calls) == 1
    assert result.success is False
    assert isinstance(result.error, EffectError)
    assert isinstance(result.error.__cause__, Boom)


# --- rule 6: failure ---------------------------------------------------------------------


async def test_exhausted_retries_roll_back_keep_the_state_and_report(
    make_config: Any, fast_retry: Any, persisted: Any
) -> None:
    ctx: dict[str, Any] = {"id": 1}
    trace: list[str] = []
    persisted.log = trace
    errors: list[tuple[BaseException, State[Any], Any]] = []
    last: list[BaseException] = []

    async def execute(c: Any, s: State[Any]) -> None:
        trace.append(f"execute {s.attempts}")
        last.append(Boom(f"attempt {s.attempts}"))
        raise last[-1]

    def on_error(e: BaseException, s: State[Any], c: Any) -> None:
        trace.append("on_error")
        errors.append((e, s, c))

    eff = effect().execute(execute).rollback(lambda c, s: trace.append(f"undo {s.attempts}"))
    sm = machine(
        make_config,
        eff.build(),
        ctx,
        retry_policy=fast_retry(2),
        hooks=Hooks(on_error=on_error),
        persist_state=persisted,
    )
    before = sm.get_state()
    result = await sm.dispatch("START")
    assert result.success is False
    assert sm.get_state() is before and result.new_state is before
    assert sm.get_history() == []
    err = result.error
    assert isinstance(err, RetryExhaustedError)
    assert (err.code, err.attempts, err.state) == (ErrorCode.RETRY_EXHAUSTED, 2, "idle")
    assert err.__cause__ is last[-1]
    assert errors == [(err, before, ctx)]
    steps = ["execute 1", "undo 1", "execute 2", "undo 2", "on_error"]
    assert [t for t in trace if t != "persist"] == steps
    assert trace[-2:] == ["on_error", "persist"]  # the failure is durable, last
    snap = persisted.last
    assert snap["current_state"]["name"] == "idle" and snap["in_flight"] is None
    assert snap["last_error"]["code"] == ErrorCode.RETRY_EXHAUSTED
    assert snap["version"] == sm.version


async def test_without_retry_policy_one_failed_attempt_is_an_effect_error(
    make_config: Any,
) -> None:
    boom = Boom("image pull failed")
    calls: list[int] = []

    def run(c: Any, s: State[Any]) -> None:
        calls.append(s.attempts)
        raise boom

    sm = machine(make_config, idempotent(run))
    result = await sm.dispatch("START")
    assert calls == [1]  # no retry policy: one attempt
    assert isinstance(result.error, EffectError)
    assert result.error.code == ErrorCode.EFFECT_ERROR
    assert result.error.__cause__ is boom


async def test_reported_failure_is_an_effect_error_with_the_result(make_config: Any) -> None:
    reported = EffectResult(False, "canary unhealthy", {"error_rate": 0.3})
    eff = idempotent(lambda c, s: reported)
    sm = machine(make_config, eff)
    result = await sm.dispatch("START")
    assert isinstance(result.error, EffectError)
    assert "canary unhealthy" in str(result.error)
    assert result.effect_result == reported
    assert sm.get_state().name == "idle"


@pytest.mark.parametrize(
    "returned", [42, "ok", {"message": "no success key"}, {"success": True, "x": 1}]
)
async def test_malformed_effect_result_is_a_failed_attempt(make_config: Any, returned: Any) -> None:
    eff = idempotent(lambda c, s: returned)
    sm = machine(make_config, eff)
    result = await sm.dispatch("START")  # does not raise
    assert result.success is False
    assert isinstance(result.error, EffectError)
    assert isinstance(result.error.__cause__, TypeError)
    assert sm.get_state().name == "idle"
