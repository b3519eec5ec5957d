"""Property tests for RetryPolicy: delay bounds per jitter mode, determinism,
validation of every number, and the delays the engine really waits (virtual time)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deploysm import (
    EffectError,
    EffectResult,
    RetryExhaustedError,
    RetryPolicy,
    StateMachineConfig,
    StateMachineError,
    Transition,
    create_state_machine,
    default_retry_policy,
    effect,
)
from deploysm.testing import VirtualClock

MODES = ("proportional", "full", "equal", "decorrelated")
FAST = settings(max_examples=150, deadline=None)
EPS = 1e-9


def close_le(a: float, b: float) -> bool:
    """``a <= b`` up to float rounding."""
    return a <= b + EPS * max(1.0, abs(b))


@st.composite
def policies(draw: st.DrawFn, mode: st.SearchStrategy[str] | None = None) -> RetryPolicy:
    initial = draw(st.floats(0.0, 1e6, allow_nan=False))
    cap = initial + draw(st.floats(0.0, 1e7, allow_nan=False))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 50)),
        initial_delay_ms=initial,
        max_delay_ms=cap,
        backoff_multiplier=draw(st.floats(1.0, 10.0)),
        jitter_factor=draw(st.floats(0.0, 1.0)),
        jitter=draw(mode if mode is not None else st.sampled_from(MODES)),  # type: ignore[arg-type]
    )


attempts = st.one_of(st.integers(1, 64), st.integers(1, 10**18))
seeds = st.integers(0, 2**32)


def ref_base(p: RetryPolicy, n: int) -> float:
    """The spec's ``min(initial * multiplier ** (n - 1), max)``, computed independently."""
    initial, cap = float(p.initial_delay_ms), float(p.max_delay_ms)
    if initial == 0.0:
        return 0.0
    try:
        raw = initial * float(p.backoff_multiplier) ** (n - 1)
    except OverflowError:
        return cap
    return min(raw, cap)


# --------------------------------------------------------------------- delay bounds

ZERO_INITIAL = RetryPolicy(initial_delay_ms=0.0, max_delay_ms=1000.0, backoff_multiplier=2.0)


@FAST
@given(p=policies(), n=attempts, seed=seeds)
def test_delay_is_always_within_zero_and_max(p: RetryPolicy, n: int, seed: int) -> None:
    d = p.delay_ms(n, random.Random(seed))
    assert isinstance(d, float)
    assert math.isfinite(d)
    assert 0.0 <= d <= p.max_delay_ms


@FAST
@given(p=policies(st.just("proportional")), n=attempts, seed=seeds)
@example(p=ZERO_INITIAL, n=5000, seed=0)  # 0 * 2.0**4999 is 0, not max_delay_ms
def test_proportional_delay_is_base_scaled_by_jitter(p: RetryPolicy, n: int, seed: int) -> None:
    base = ref_base(p, n)
    j = p.jitter_factor
    d = p.delay_ms(n, random.Random(seed))
    assert close_le(base * (1 - j), d), (base, d)
    assert close_le(d, min(base * (1 + j), p.max_delay_ms)), (base, d)


def test_default_policy_is_proportional_with_twenty_percent_jitter() -> None:
    p = default_retry_policy
    assert p.jitter == "proportional"
    for n, base in ((1, 1000.0), (2, 2000.0), (3, 4000.0), (10, 30000.0)):
        for seed in range(20):
            d = p.delay_ms(n, random.Random(seed))
            assert 0.8 * base - EPS <= d <= min(1.2 * base, 30000.0) + EPS


@FAST
@given(p=policies(st.just("full")), n=attempts, seed=seeds)
@example(p=ZERO_INITIAL.replace(jitter="full"), n=5000, seed=0)
def test_full_jitter_is_within_zero_and_base(p: RetryPolicy, n: int, seed: int) -> None:
    d = p.delay_ms(n, random.Random(seed))
    assert d >= 0.0
    assert close_le(d, ref_base(p, n))


@FAST
@given(p=policies(st.just("equal")), n=attempts, seed=seeds)
@example(p=ZERO_INITIAL.replace(jitter="equal"), n=5000, seed=0)
def test_equal_jitter_is_within_half_base_and_base(p: RetryPolicy, n: int, seed: int) -> None:
    base = ref_base(p, n)
    d = p.delay_ms(n, random.Random(seed))
    assert close_le(base / 2, d)
    assert close_le(d, base)


@FAST
@given(p=policies(st.just("decorrelated")), count=st.integers(1, 30), seed=seeds)
def test_decorrelated_jitter_follows_previous_delay(p: RetryPolicy, count: int, seed: int) -> None:
    rng = random.Random(seed)
    prev: float | None = None
    for n in range(1, count + 1):
        d = p.delay_ms(n, rng, prev)
        upper = min(p.max_delay_ms, 3 * (p.initial_delay_ms if prev is None else prev))
        assert 0.0 <= d <= p.max_delay_ms
        if d != p.max_delay_ms:  # exactly max when capped
            assert close_le(p.initial_delay_ms, d)
            assert close_le(d, upper)
        prev = d


@FAST
@given(p=policies(), count=st.integers(1, 20), seed=seeds)
def test_same_seed_gives_same_delay_sequence(p: RetryPolicy, count: int, seed: int) -> None:
    def sequence() -> list[float]:
        rng, prev, out = random.Random(seed), None, []
        for n in range(1, count + 1):
            prev = p.delay_ms(n, rng, prev)
            out.append(prev)
        return out

    assert sequence() == sequence()


@FAST
@given(p=policies(), n=st.integers(10**6, 10**30), seed=seeds)
def test_huge_attempt_numbers_do_not_overflow(p: RetryPolicy, n: int, seed: int) -> None:
    assert 0.0 <= p.base_delay_ms(n) <= p.max_delay_ms
    d = p.delay_ms(n, random.Random(seed))
    assert math.isfinite(d)
    assert 0.0 <= d <= p.max_delay_ms


@settings(max_examples=60, deadline=None)
@given(
    initial=st.integers(0, 10_000),
    extra=st.integers(0, 100_000),
    mult=st.integers(1, 5),
    n=st.integers(1, 5_000),
    mode=st.sampled_from(MODES),
)
def test_integer_fields_from_a_mapping_give_bounded_delays(
    initial: int, extra: int, mult: int, n: int, mode: str
) -> None:
    """A policy read from JSON/YAML has int fields; the delay is still a bounded float."""
    p = RetryPolicy.coerce(
        {
            "initial_delay_ms": initial,
            "max_delay_ms": initial + extra,
            "backoff_multiplier": mult,
            "jitter": mode,
        }
    )
    assert p is not None and p.problems() == []
    d = p.delay_ms(n, random.Random(n))
    assert isinstance(d, float)
    assert 0.0 <= d <= initial + extra


# --------------------------------------------------------------------- validation

NON_FINITE = [math.nan, math.inf, -math.inf]
BAD_VALUES: list[tuple[str, Any]] = [
    *[("max_attempts", v) for v in (0, -1, -(10**9), 1.0, 2.5, True, False, None, "3")],
    *[("initial_delay_ms", v) for v in (-1, -0.5, *NON_FINITE, None, "1", True)],
    *[("max_delay_ms", v) for v in (-1, -1e-9, *NON_FINITE, None, "1", False)],
    *[("backoff_multiplier", v) for v in (0.99, 0, -2, 0.5, *NON_FINITE, None, "2", True)],
    *[("jitter_factor", v) for v in (-0.01, 1.01, 2, -1, *NON_FINITE, None, "0.2", True)],
    *[("jitter", v) for v in ("bogus", "", "FULL", None, 1)],
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_problems_flags_each_bad_number(field: str, value: Any) -> None:
    p = default_retry_policy.replace(**{field: value})
    problems = p.problems()
    assert problems, f"{field}={value!r} was not flagged"
    assert any(field in msg for msg in problems), problems


@pytest.mark.parametrize(("initial", "cap"), [(10.0, 9.99), (1000, 0), (5.0, 0.0)])
def test_problems_flags_max_below_initial(initial: float, cap: float) -> None:
    p = RetryPolicy(initial_delay_ms=initial, max_delay_ms=cap)
    assert any("max_delay_ms" in msg and "initial_delay_ms" in msg for msg in p.problems())


@FAST
@given(p=policies())
def test_valid_policies_have_no_problems(p: RetryPolicy) -> None:
    assert p.problems() == []


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**1024]),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FAST
@given(field=st.sampled_from([f.name for f in dataclasses.fields(RetryPolicy)]), value=junk)
@example(field="initial_delay_ms", value=10**400)
@example(field="retryable_errors", value=5)
def test_problems_never_raises(field: str, value: Any) -> None:
    """problems() reports; it must not crash on the very values it exists to catch."""
    problems = default_retry_policy.replace(**{field: value}).problems()
    assert isinstance(problems, list)


@pytest.mark.parametrize(
    "mapping",
    [{"max_attempts": 3, "bogus": 1}, {"maxAttempts": 3}, {"retry": 1}, {1: 2}],
)
def test_mapping_with_unknown_fields_is_rejected(mapping: dict[Any, Any]) -> None:
    with pytest.raises(ValueError, match="unknown retry policy field"):
        RetryPolicy.coerce(mapping)
    config = {
        "id": "m",
        "initial_state": "a",
        "states": ["a", "b"],
        "events": ["GO"],
        "transitions": [{"from": "a", "to": "b", "event": "GO"}],
        "retry_policy": mapping,
    }
    with pytest.raises(StateMachineError) as info:
        create_state_machine(config, {})
    assert info.value.code == "INVALID_CONFIG"
    assert any("retry_policy" in p for p in info.value.problems)


def test_mapping_missing_fields_take_defaults() -> None:
    p = RetryPolicy.coerce({"max_attempts": 7})
    assert p == default_retry_policy.replace(max_attempts=7)


def test_replace_returns_a_copy_and_leaves_default_unchanged() -> None:
    before = dataclasses.astuple(default_retry_policy)
    p = default_retry_policy.replace(max_attempts=5)
    assert p.max_attempts == 5
    assert p is not default_retry_policy
    assert default_retry_policy.max_attempts == 3
    assert dataclasses.astuple(default_retry_policy) == before
    assert dataclasses.replace(p, max_attempts=3) == default_retry_policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_retry_policy.max_attempts = 9  # type: ignore[misc]


# --------------------------------------------------------------------- end to end


async def run_always_failing(
    policy: RetryPolicy, seed: int, raise_error: bool
) -> tuple[Any, list[float], list[Any], list[int], Any]:
    clock = VirtualClock()
    times: list[float] = []
    keys: list[Any] = []
    numbers: list[int] = []

    def execute(ctx: Any, state: Any) -> Any:
        times.append(clock.elapsed)
        keys.append(state.idempotency_key)
        numbers.append(state.attempts)
        if raise_error:
            raise RuntimeError("deploy API down")
        return EffectResult(False, "deploy API down")

    eff = effect().execute(execute).set_idempotent(True).build()
    cfg: StateMachineConfig[str, str, dict[str, Any]] = StateMachineConfig(
        id="retry-e2e",
        initial_state="idle",
        states=["idle", "done"],
        events=["GO"],
        transitions=[Transition("idle", "done", "GO", effect=eff)],
        retry_policy=policy,
        clock=clock,
        random=random.Random(seed),
    )
    m = create_state_machine(cfg, {})
    result = await m.dispatch("GO")
    return result, times, keys, numbers, m


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 8),
    seed=seeds,
    mode=st.sampled_from(MODES),
    initial=st.floats(1.0, 5000.0),
    raise_error=st.booleans(),
)
def test_engine_waits_exactly_the_policy_delays(
    n: int, seed: int, mode: str, initial: float, raise_error: bool
) -> None:
    policy = RetryPolicy(
        max_attempts=n,
        initial_delay_ms=initial,
        max_delay_ms=initial * 20,
        jitter=mode,  # type: ignore[arg-type]
    )
    result, times, keys, numbers, m = asyncio.run(run_always_failing(policy, seed, raise_error))

    assert len(times) == n
    assert numbers == list(range(1, n + 1))
    # Mirror the engine's draw order on a fresh Random of the same seed: one
    # getrandbits(64) for the idempotency key (after the machine id and the version
    # the intent starts from, 0 here), then one delay per retry.
    rng = random.Random(seed)
    bits = rng.getrandbits(64)
    assert keys == [f"{m.machine_id}:0:{bits:016x}"] * n
    prev: float | None = None
    expected: list[float] = []
    for attempt in range(1, n):
        prev = policy.delay_ms(attempt, rng, prev)
        expected.append(prev)
    waited = [(b - a) * 1000.0 for a, b in itertools.pairwise(times)]
    assert waited == pytest.approx(expected, rel=1e-9, abs=1e-6)

    assert result.success is False
    assert m.get_state().name == "idle"
    if n > 1:
        assert isinstance(result.error, RetryExhaustedError)
        assert result.error.attempts == n
    else:
        assert isinstance(result.error, EffectError)
    metrics = m.get_metrics()
    assert metrics.total_attempts == n
    assert metrics.total_retries == n - 1
