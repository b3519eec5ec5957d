"""Random machines, random event sequences, checked step by step against a small
reference model of the transition semantics (SPEC section 2: choice, retries,
rollback, commit, failure)."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from deploysm import (
    EffectError,
    EffectResult,
    RetryExhaustedError,
    RetryPolicy,
    StateMachineConfig,
    StateMachineError,
    Transition,
    TransitionError,
    create_state_machine,
    effect,
)
from deploysm.testing import VirtualClock

EFFECT_KINDS = ("idempotent", "rollback", "no_rollback")
FAIL_MODES = ("result", "raise", "no_retry")


@dataclass(frozen=True)
class EffectSpec:
    kind: str  # idempotent | rollback (non-idempotent with rollback) | no_rollback
    fail_mode: str  # result (success=False) | raise | no_retry (can_retry=False)


@dataclass(frozen=True)
class TransitionSpec:
    sources: tuple[str, ...]
    to: str
    event: str
    guard: tuple[Any, ...] | None  # ("even",) ("odd",) ("lt", k) ("raise",)
    effect: int | None  # index into Spec.effects
    as_mapping: bool


@dataclass(frozen=True)
class Spec:
    states: tuple[str, ...]
    events: tuple[str, ...]
    transitions: tuple[TransitionSpec, ...]
    effects: tuple[EffectSpec, ...]
    state_effects: dict[str, int]  # config ``effects`` mapping: target state -> effect index
    max_attempts: int
    no_finals: bool


class Tape:
    """Effect outcomes, consumed one per attempt, in order (cycled; empty = success)."""

    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes
        self.i = 0

    def next(self) -> bool:
        if not self.outcomes:
            return True
        ok = self.outcomes[self.i % len(self.outcomes)]
        self.i += 1
        return ok


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    states = tuple(f"s{i}" for i in range(draw(st.integers(2, 4))))
    events = tuple(f"e{i}" for i in range(draw(st.integers(1, 3))))
    effects = tuple(
        draw(
            st.lists(
                st.builds(EffectSpec, st.sampled_from(EFFECT_KINDS), st.sampled_from(FAIL_MODES)),
                min_size=1,
                max_size=3,
            )
        )
    )
    eff_index = st.one_of(st.none(), st.integers(0, len(effects) - 1))
    guard = st.one_of(
        st.none(),
        st.sampled_from([("even",), ("odd",), ("raise",)]),
        st.tuples(st.just("lt"), st.integers(0, 4)),
    )
    transitions = draw(
        st.lists(
            st.builds(
                TransitionSpec,
                st.lists(st.sampled_from(states), min_size=1, max_size=3, unique=True).map(tuple),
                st.sampled_from(states),
                st.sampled_from(events),
                guard,
                eff_index,
                st.booleans(),
            ),
            min_size=2,
            max_size=10,
        )
    )
    state_effects = draw(
        st.dictionaries(st.sampled_from(states), st.integers(0, len(effects) - 1), max_size=3)
    )
    return Spec(
        states,
        events,
        tuple(transitions),
        effects,
        state_effects,
        draw(st.integers(1, 3)),
        draw(st.booleans()),
    )


def guard_passes(guard: tuple[Any, ...], counter: int) -> bool:
    kind = guard[0]
    if kind == "even":
        return counter % 2 == 0
    if kind == "odd":
        return counter % 2 == 1
    if kind == "lt":
        return counter < guard[1]
    return False  # "raise": a guard that raises refuses


def make_guard(guard: tuple[Any, ...]) -> Any:
    def check(ctx: dict[str, Any], event: Any) -> bool:
        if guard[0] == "raise":
            raise RuntimeError("guard exploded")
        return guard_passes(guard, ctx["counter"])

    return check


def make_effect(spec: EffectSpec, tape: Tape) -> Any:
    def fail() -> Any:
        if spec.fail_mode == "raise":
            raise RuntimeError("effect failed")
        if spec.fail_mode == "no_retry":
            return {"success": False, "can_retry": False}
        return EffectResult(False, "effect failed")

    def execute(ctx: dict[str, Any], state: Any) -> Any:
        if spec.kind == "rollback":
            ctx["counter"] += 1  # partial work that rollback must undo
            return None if tape.next() else fail()
        if tape.next():
            ctx["counter"] += 1
            return None
        return fail()

    def rollback(ctx: dict[str, Any], state: Any) -> None:
        ctx["counter"] -= 1

    b = effect().execute(execute)
    if spec.kind == "idempotent":
        b = b.set_idempotent(True)
    elif spec.kind == "rollback":
        b = b.rollback(rollback)
    return b.build()


def build_config(spec: Spec, tape: Tape, clock: VirtualClock) -> StateMachineConfig[Any, Any, Any]:
    built = [make_effect(e, tape) for e in spec.effects]
    transitions: list[Any] = []
    for t in spec.transitions:
        g = make_guard(t.guard) if t.guard is not None else None
        eff = built[t.effect] if t.effect is not None else None
        src: Any = t.sources[0] if len(t.sources) == 1 else list(t.sources)
        if t.as_mapping:
            transitions.append(
                {"from": src, "to": t.to, "event": t.event, "guard": g, "effect": eff}
            )
        else:
            transitions.append(Transition(src, t.to, t.event, guard=g, effect=eff))
    return StateMachineConfig(
        id="model",
        initial_state=spec.states[0],
        states=list(spec.states),
        events=list(spec.events),
        transitions=transitions,
        effects={s: built[i] for s, i in spec.state_effects.items()},
        retry_policy=RetryPolicy(
            max_attempts=spec.max_attempts, initial_delay_ms=1.0, max_delay_ms=5.0
        ),
        final_states=[] if spec.no_finals else None,
        clock=clock,
        random=random.Random(0),
        history_limit=history_limit(spec),
    )


def history_limit(spec: Spec) -> int:
    """Small (2 to 4), so that long runs keep only their recent states."""
    return len(spec.states)


@dataclass
class Model:
    """The reference: what the machine must do, computed without the engine."""

    spec: Spec
    tape: Tape
    state: str
    counter: int = 0
    successes: int = 0
    total_attempts: int = 0
    completed: bool = False
    finals: frozenset[str] = field(default_factory=frozenset)

    def effect_of(self, t: TransitionSpec) -> EffectSpec | None:
        if t.effect is not None:
            return self.spec.effects[t.effect]
        i = self.spec.state_effects.get(t.to)
        return self.spec.effects[i] if i is not None else None

    def step(self, event: str) -> tuple[str, int]:
        """Returns (outcome, attempts); outcome is one of invalid, not_active,
        no_transition, guard, effect_failed, ok."""
        if event == "":
            return "invalid", 0
        if self.completed:
            return "not_active", 0
        candidates = [
            t for t in self.spec.transitions if self.state in t.sources and t.event == event
        ]
        if not candidates:
            return "no_transition", 0
        chosen = next(
            (t for t in candidates if t.guard is None or guard_passes(t.guard, self.counter)),
            None,
        )
        if chosen is None:
            return "guard", 0
        eff = self.effect_of(chosen)
        attempts = 0
        if eff is not None:
            while True:
                attempts += 1
                self.total_attempts += 1
                if self.tape.next():
                    self.counter += 1
                    break
                retriable = eff.kind != "no_rollback" and eff.fail_mode != "no_retry"
                if attempts >= self.spec.max_attempts or not retriable:
                    return "effect_failed", attempts
        self.state = chosen.to
        self.successes += 1
        self.completed = chosen.to in self.finals
        return "ok", attempts


def allowed(spec: Spec) -> set[tuple[str, str, str]]:
    return {(s, t.event, t.to) for t in spec.transitions for s in t.sources}


async def run_sequence(spec: Spec, outcomes: list[bool], events: list[str]) -> None:
    clock = VirtualClock()
    m = create_state_machine(build_config(spec, Tape(outcomes), clock), {"counter": 0})
    finals = (
        frozenset()
        if spec.no_finals
        else frozenset(s for s in spec.states if not any(s in t.sources for t in spec.transitions))
    )
    model = Model(spec, Tape(outcomes), spec.states[0], finals=finals)
    table = allowed(spec)
    for event in events:
        before = m.get_state()
        version = m.version
        outcome, attempts = model.step(event)
        try:
            result = await m.dispatch(event)
        except StateMachineError as e:
            assert outcome in ("invalid", "not_active"), (event, outcome, e)
            assert e.code == ("INVALID_EVENT" if outcome == "invalid" else "NOT_ACTIVE")
            assert m.get_state() is before
            assert m.version == version
        else:
            assert outcome not in ("invalid", "not_active"), (event, outcome, result)
            assert result.success == (outcome == "ok"), (event, outcome, result)
            if result.success:
                assert (before.name, event, result.new_state.name) in table
                assert result.new_state is m.get_state()
                assert m.get_history()[-1] is before
                assert m.version == version + 1
                assert result.new_state.version == m.version
                assert result.new_state.attempts == attempts
                assert result.new_state.data["event"] == event
            else:
                assert m.get_state() is before
                assert result.new_state.name == before.name
                assert m.version == version
                err = result.error
                if outcome in ("no_transition", "guard"):
                    assert isinstance(err, TransitionError)
                    assert err.reason == outcome
                else:
                    assert isinstance(err, EffectError | RetryExhaustedError), err
                    if isinstance(err, RetryExhaustedError):
                        assert err.attempts == attempts == spec.max_attempts
        assert m.version >= version
        # the whole picture agrees with the model after every step
        history = m.get_history()
        current = m.get_state()
        assert current.name == model.state
        # the machine keeps the last ``history_limit`` states left, and their visits
        assert len(history) == min(model.successes, history_limit(spec))
        assert m.version == model.successes  # no persistence: one version per commit
        metrics = m.get_metrics()
        assert len(metrics.states) == len(history) + 1
        assert [v.state for v in metrics.states] == [h.name for h in history] + [current.name]
        assert sum(t.visits for t in metrics.per_state.values()) == model.successes + 1
        assert metrics.total_transitions == model.successes
        assert metrics.total_attempts == model.total_attempts
        assert metrics.current_state == current.name
        assert m.get_context()["counter"] == model.counter
        assert (m.status == "completed") == model.completed
        chain = [*history, current]
        for prev, nxt in itertools.pairwise(chain):
            assert (prev.name, nxt.data["event"], nxt.name) in table
            assert nxt.version == prev.version + 1


# names the machine does not know, and "" (not an event name at all)
OTHER_NAMES = st.sampled_from(["e3", "zz", "E0", "s0", ""])


@settings(max_examples=200, deadline=None)
@given(spec=specs(), outcomes=st.lists(st.booleans(), max_size=12), data=st.data())
def test_random_event_sequences_match_reference_model(
    spec: Spec, outcomes: list[bool], data: st.DataObject
) -> None:
    known = st.sampled_from(spec.events)
    events = data.draw(st.lists(st.one_of(known, known, known, OTHER_NAMES), max_size=14))
    asyncio.run(run_sequence(spec, outcomes, events))


@settings(max_examples=40, deadline=None)
@given(spec=specs(), seed=st.integers(0, 2**32), length=st.integers(0, 20))
def test_seeded_random_outcomes_match_reference_model(spec: Spec, seed: int, length: int) -> None:
    """Outcomes from a seeded random.Random instead of hypothesis-drawn data."""
    rng = random.Random(seed)
    outcomes = [rng.random() < 0.6 for _ in range(rng.randint(0, 10))]
    events = [rng.choice(["e0", "e1", "e2", "zz"]) for _ in range(length)]
    asyncio.run(run_sequence(spec, outcomes, events))
