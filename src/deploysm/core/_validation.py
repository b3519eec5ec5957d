"""Static checks of a workflow definition: errors that refuse it, warnings that advise."""

from __future__ import annotations

import random as _random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._config import (
    HOOK_NAMES,
    MISSING,
    StateMachineConfig,
    Transition,
    coerce_config,
    transitions_of,
)
from ._effects import Effect
from ._history import MAX_HISTORY_LIMIT
from ._retry import MAX_DELAY_MS, is_finite_number

__all__ = ["ValidationReport", "validate"]


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """``errors`` make a config unusable; ``warnings`` point at likely mistakes."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(config: StateMachineConfig[Any, Any, Any] | Mapping[str, Any]) -> ValidationReport:
    """Check a config without building a machine: every error and every warning."""
    cfg, problems = coerce_config(config)
    if cfg is None:
        return ValidationReport(errors=problems)
    errors = problems + check_errors(cfg)
    warnings = check_warnings(cfg) if not errors else []
    return ValidationReport(errors=errors, warnings=warnings)


def _names(seq: Iterable[Any], kind: str, errors: list[str]) -> set[str]:
    seen: set[str] = set()
    for n in seq:
        if not isinstance(n, str) or not n:
            errors.append(f"{kind} names must be non-empty strings, got {n!r}")
        elif n in seen:
            errors.append(f"duplicate {kind} name: {n!r}")
        else:
            seen.add(n)
    return seen


def check_errors(cfg: StateMachineConfig[Any, Any, Any]) -> list[str]:
    """Problems that make the config unusable, all of them, in a stable order."""
    errors: list[str] = []
    if cfg.id is not None and (not isinstance(cfg.id, str) or not cfg.id):
        errors.append(f"id must be a non-empty string, got {cfg.id!r}")
    states = _names(cfg.states, "state", errors)
    events = _names(cfg.events, "event", errors)
    if not states and cfg.states is not MISSING:
        errors.append("states must name at least one state")
    if cfg.initial_state is not None and not _known(cfg.initial_state, states):
        errors.append(f"initial_state {cfg.initial_state!r} is not one of the states")
    for i, t in enumerate(transitions_of(cfg)):
        _check_transition(i, t, states, events, errors)
    for name, eff in (cfg.effects or {}).items():
        if not _known(name, states):
            errors.append(f"effects names unknown state {name!r}")
        _check_effect(f"effects[{name!r}]", eff, errors)
    if cfg.retry_policy is not None and not isinstance(cfg.retry_policy, Mapping):
        errors.extend(cfg.retry_policy.problems())
    _check_timeouts(cfg, events, errors)
    hooks = cfg.hooks
    if hooks is not None and not isinstance(hooks, Mapping):
        for h in HOOK_NAMES:
            fn = getattr(hooks, h)
            if fn is not None and not callable(fn):
                errors.append(f"hooks.{h} must be callable")
    finals = cfg.final_states
    if finals is not None and (isinstance(finals, str | bytes) or not isinstance(finals, Iterable)):
        errors.append("final_states must be a list of state names")
    else:
        for state in finals or ():
            if not _known(state, states):
                errors.append(f"final_states names unknown state {state!r}")
        _check_failure_states(cfg, states, errors)
    if cfg.compensated_state is not None and not _known(cfg.compensated_state, states):
        errors.append(f"compensated_state {cfg.compensated_state!r} is not one of the states")
    for name in ("persist_state", "load_state", "validate_context"):
        fn = getattr(cfg, name)
        if fn is not None and not callable(fn):
            errors.append(f"{name} must be callable")
    clock = cfg.clock
    if clock is not None and not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
    ):
        errors.append("clock must have now() and async sleep(seconds)")
    if cfg.random is not None and not isinstance(cfg.random, _random.Random):
        errors.append("random must be a random.Random")
    store = cfg.store
    if store is not None:
        if not all(callable(getattr(store, n, None)) for n in ("save", "load", "journal", "list")):
            errors.append("store must implement the Store protocol (deploysm.stores)")
        if cfg.persist_state is not None or cfg.load_state is not None:
            errors.append("give either store= or persist_state=/load_state=, not both")
    keys = cfg.redact_keys
    if keys is not None and (
        isinstance(keys, str | bytes)
        or not isinstance(keys, Iterable)
        or not all(isinstance(k, str) and k for k in keys)
    ):
        errors.append("redact_keys must be a list of non-empty strings")
    lease = cfg.lease_ms
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 30:
        errors.append(f"lease_ms must be an int of at least 30 (milliseconds), got {lease!r}")
    limit = cfg.history_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_HISTORY_LIMIT:
        errors.append(
            f"history_limit must be an int from 0 to {MAX_HISTORY_LIMIT:,}, got {limit!r}"
        )
    return errors


def _check_failure_states(
    cfg: StateMachineConfig[Any, Any, Any], states: set[str], errors: list[str]
) -> None:
    failures = cfg.failure_states
    if failures is None:
        return
    if isinstance(failures, str | bytes) or not isinstance(failures, Iterable):
        errors.append("failure_states must be a list of state names")
        return
    try:
        finals: frozenset[str] | None = final_states_of(cfg)
    except TypeError:  # names that are not even hashable, reported on their own
        finals = None
    for state in failures:
        if not _known(state, states):
            errors.append(f"failure_states names unknown state {state!r}")
        elif finals is not None and state not in finals:
            errors.append(f"failure_states names {state!r}, which is not a final state")


def _known(name: Any, names: set[str]) -> bool:
    return isinstance(name, str) and name in names


def _check_transition(
    i: int, t: Transition[Any, Any], states: set[str], events: set[str], errors: list[str]
) -> None:
    where = f"transitions[{i}]"
    src = t.from_
    sources = [src] if isinstance(src, str) else list(src) if isinstance(src, Iterable) else [src]
    if not sources:
        errors.append(f"{where} has an empty 'from'")
    for s in sources:
        if not _known(s, states):
            errors.append(f"{where} 'from' names unknown state {s!r}")
    if not _known(t.to, states):
        errors.append(f"{where} 'to' names unknown state {t.to!r}")
    if not _known(t.event, events):
        errors.append(f"{where} names unknown event {t.event!r}")
    if t.guard is not None and not callable(t.guard):
        errors.append(f"{where} guard must be callable")
    if t.effect is not None:
        _check_effect(f"{where}.effect", t.effect, errors)


def _check_effect(where: str, eff: Any, errors: list[str]) -> None:
    """An effect the engine can run: built, its functions callable."""
    if not isinstance(eff, Effect):
        errors.append(f"{where} must be a built effect (effect()...build())")
        return
    for name in ("execute", "rollback", "reconcile"):
        fn = getattr(eff, name)
        if (fn is not None or name == "execute") and not callable(fn):
            errors.append(f"{where}.{name} must be callable, got {type(fn).__name__}")
    if not isinstance(eff.idempotent, bool):
        errors.append(f"{where}.idempotent must be True or False, got {eff.idempotent!r}")
    if eff.name is not None and not isinstance(eff.name, str):
        errors.append(f"{where}.name must be a string, got {type(eff.name).__name__}")


def _check_timeouts(
    cfg: StateMachineConfig[Any, Any, Any], events: set[str], errors: list[str]
) -> None:
    tc = cfg.timeout
    if tc is None or isinstance(tc, Mapping):
        return
    for name in ("state_timeout_ms", "transition_timeout_ms", "effect_timeout_ms"):
        v = getattr(tc, name)
        if v is None:
            continue
        if not is_finite_number(v) or not 0 < v <= MAX_DELAY_MS:
            errors.append(
                f"timeout.{name} must be a finite number > 0 and <= {MAX_DELAY_MS} (a year), "
                f"got {v!r}"
            )
    if tc.timeout_event is not None and not _known(tc.timeout_event, events):
        errors.append(f"timeout.timeout_event names unknown event {tc.timeout_event!r}")


def final_states_of(cfg: StateMachineConfig[Any, Any, Any]) -> frozenset[str]:
    """The configured final states, by default the states with no outgoing transition."""
    if cfg.final_states is not None:
        return frozenset(cfg.final_states)
    has_out = {s for t in transitions_of(cfg) for s in _sources(t)}
    return frozenset(s for s in cfg.states if s not in has_out)


def failure_states_of(cfg: StateMachineConfig[Any, Any, Any]) -> frozenset[str]:
    """The final states that mean failure: ``failure_states`` when given, else the
    final state named ``failed`` if there is one."""
    if cfg.failure_states is not None:
        return frozenset(cfg.failure_states)
    return frozenset({"failed"}) & final_states_of(cfg)


def _sources(t: Transition[Any, Any]) -> tuple[str, ...]:
    return (t.from_,) if isinstance(t.from_, str) else tuple(t.from_)


def check_warnings(cfg: StateMachineConfig[Any, Any, Any]) -> list[str]:
    """Likely mistakes in a valid config."""
    warnings: list[str] = []
    out: dict[str, set[str]] = {s: set() for s in cfg.states}
    into: dict[str, set[str]] = {s: set() for s in cfg.states}
    transitions = transitions_of(cfg)
    for t in transitions:
        for s in _sources(t):
            out[s].add(t.to)
            into[t.to].add(s)
    reachable = _closure({cfg.initial_state}, out)
    if cfg.compensated_state is not None:  # compensate() leads there, not a transition
        reachable |= _closure({cfg.compensated_state}, out)
    for s in cfg.states:
        if s not in reachable:
            warnings.append(f"state {s!r} is unreachable from {cfg.initial_state!r}")
    finals = final_states_of(cfg)
    for s in cfg.states:
        if s not in finals and not out[s]:
            warnings.append(
                f"state {s!r} is a dead end: no transition leaves it, yet it is not final"
            )
    if not finals:
        warnings.append("no final state: the machine never completes by itself")
    else:
        can_finish = _closure(set(finals), into)
        for s in cfg.states:
            if s in reachable and s not in can_finish and out[s]:
                warnings.append(f"state {s!r} can never reach a final state")
    seen: dict[tuple[str, str], int] = {}
    for i, t in enumerate(transitions):
        for s in _sources(t):
            key = (s, t.event)
            if key in seen:
                warnings.append(
                    f"transitions[{i}] ({s} --{t.event}-->) is never taken: "
                    f"transitions[{seen[key]}] matches first and has no guard"
                )
            elif t.guard is None:
                seen[key] = i
    effects: list[tuple[str, Effect[Any]]] = [
        (f"effects[{k!r}]", e) for k, e in (cfg.effects or {}).items() if isinstance(e, Effect)
    ]
    effects += [
        (f"transitions[{i}].effect", t.effect)
        for i, t in enumerate(transitions)
        if isinstance(t.effect, Effect)
    ]
    for where, eff in effects:
        if not eff.idempotent and eff.rollback is None:
            warnings.append(
                f"{where} is not idempotent and has no rollback: it will not be retried, and a "
                "crash during it needs an operator (add .rollback(fn) or .set_idempotent(True))"
            )
    return warnings


def _closure(start: set[str], edges: Mapping[str, set[str]]) -> set[str]:
    seen = set(start)
    stack = list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
