"""Configs that used to be accepted and should not be: effects that cannot be called,
effects given as a list of pairs, and retry policies or timeouts beyond what is sane
(``max_attempts=10**18`` ran 103,806 attempts in 2 s). Each is ``INVALID_CONFIG``
listing the problem, from ``create_state_machine`` and from ``validate`` alike."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deploysm
from deploysm import (
    ErrorCode,
    RetryPolicy,
    StateMachineError,
    TimeoutConfig,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.core._effects import Effect
from deploysm.core._retry import MAX_ATTEMPTS, MAX_DELAY_MS


def ok(ctx: Any, state: Any) -> None:
    return None


def config(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "id": "bounds",
        "initial_state": "a",
        "states": ["a", "b", "c"],
        "events": ["GO", "END"],
        "transitions": [Transition("a", "b", "GO"), Transition("b", "c", "END")],
        "effects": {"b": effect().execute(ok).set_idempotent(True).build()},
    }
    return cfg | changes


def refused(cfg: dict[str, Any], *fragments: str) -> list[str]:
    with pytest.raises(StateMachineError) as info:
        create_state_machine(cfg, {})
    assert info.value.code == ErrorCode.INVALID_CONFIG
    problems = info.value.problems
    for fragment in fragments:
        assert any(fragment in p for p in problems), (fragment, problems)
    report = deploysm.validate(cfg)
    assert not report.ok and report.errors == problems
    return problems


def accepted(cfg: dict[str, Any]) -> None:
    assert deploysm.validate(cfg).ok, deploysm.validate(cfg).errors
    create_state_machine(cfg, {})


@pytest.mark.parametrize(
    ("eff", "fragment"),
    [
        (Effect(execute=123), "effects['b'].execute must be callable, got int"),
        (Effect(execute=ok, rollback="x"), "effects['b'].rollback must be callable, got str"),
        (Effect(execute=ok, reconcile=1.5), "effects['b'].reconcile must be callable, got float"),
        (Effect(execute=ok, idempotent="false"), "effects['b'].idempotent must be True or False"),
        (Effect(execute=ok, name=7), "effects['b'].name must be a string"),
    ],
)
def test_an_effect_that_cannot_run_is_refused(eff: Effect[Any], fragment: str) -> None:
    refused(config(effects={"b": eff}), fragment)
    transitions = [Transition("a", "b", "GO", effect=eff), Transition("b", "c", "END")]
    refused(
        config(effects=None, transitions=transitions),
        fragment.replace("effects['b']", "transitions[0].effect"),
    )


def test_every_bad_field_of_an_effect_is_listed() -> None:
    eff = Effect(execute=None, rollback="r", reconcile="c")  # type: ignore[arg-type]
    problems = refused(config(effects={"b": eff}), ".execute", ".rollback", ".reconcile")
    assert len(problems) == 3


@pytest.mark.parametrize(
    "effects",
    [
        [("b", effect().execute(ok).set_idempotent(True).build())],
        (("b", effect().execute(ok).set_idempotent(True).build()),),
        "b",
    ],
)
def test_effects_must_be_a_mapping(effects: Any) -> None:
    refused(config(effects=effects), "effects must be a mapping of state name to effect")


def test_a_mapping_of_effects_is_fine() -> None:
    accepted(config())
    accepted(config(effects={}))


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"max_attempts": 10**18}, f"retry_policy.max_attempts must be <= {MAX_ATTEMPTS}"),
        ({"max_attempts": MAX_ATTEMPTS + 1}, "retry_policy.max_attempts must be <= "),
        ({"max_delay_ms": 1e300}, "retry_policy.max_delay_ms must be a finite number"),
        (
            {"initial_delay_ms": MAX_DELAY_MS + 1, "max_delay_ms": MAX_DELAY_MS + 1},
            "retry_policy.initial_delay_ms must be a finite number >= 0 and <= ",
        ),
        ({"backoff_multiplier": 1e309}, "retry_policy.backoff_multiplier"),
        ({"jitter_factor": 1.5}, "retry_policy.jitter_factor"),
    ],
)
def test_a_retry_policy_beyond_the_bounds_is_refused(policy: dict[str, Any], fragment: str) -> None:
    refused(config(retry_policy=policy), fragment)
    refused(config(retry_policy=RetryPolicy(**policy)), fragment)


def test_the_bounds_themselves_are_accepted() -> None:
    policy = {"max_attempts": MAX_ATTEMPTS, "initial_delay_ms": 0, "max_delay_ms": MAX_DELAY_MS}
    accepted(config(retry_policy=policy))
    accepted(config(timeout={"state_timeout_ms": MAX_DELAY_MS, "timeout_event": "END"}))


@pytest.mark.parametrize("name", ["state_timeout_ms", "transition_timeout_ms", "effect_timeout_ms"])
def test_a_timeout_beyond_the_bound_is_refused(name: str) -> None:
    refused(config(timeout={name: MAX_DELAY_MS * 2}), f"timeout.{name} must be")
    refused(config(timeout=TimeoutConfig(**{name: 1e300})), f"timeout.{name} must be")


# -- the property: a policy that is accepted can run, delays and all


numbers = st.one_of(
    st.integers(min_value=-5, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, MAX_ATTEMPTS, MAX_ATTEMPTS + 1, MAX_DELAY_MS, MAX_DELAY_MS + 1]),
)
FIELDS = ("max_attempts", "initial_delay_ms", "max_delay_ms", "backoff_multiplier", "jitter_factor")


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(FIELDS), numbers, max_size=5),
    st.sampled_from(["proportional", "full", "equal", "decorrelated"]),
)
def test_an_accepted_retry_policy_has_sane_attempts_and_delays(
    fields: dict[str, Any], jitter: str
) -> None:
    cfg = config(retry_policy={**fields, "jitter": jitter})
    report = deploysm.validate(cfg)
    if not report.ok:
        with pytest.raises(StateMachineError) as info:
            create_state_machine(cfg, {})
        assert info.value.code == ErrorCode.INVALID_CONFIG
        return
    create_state_machine(cfg, {})
    policy = RetryPolicy.coerce(cfg["retry_policy"])
    assert policy is not None
    assert 1 <= policy.max_attempts <= MAX_ATTEMPTS
    rng, now, previous = random.Random(1), datetime(2025, 1, 1, tzinfo=UTC), None
    for attempt in range(1, min(policy.max_attempts, 60) + 1):
        delay = policy.delay_ms(attempt, rng, previous)
        assert 0 <= delay <= MAX_DELAY_MS
        now + timedelta(milliseconds=delay)  # a next_retry_at that can be stored
        previous = delay
