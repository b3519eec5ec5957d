"""A compiled workflow definition, shared by every machine built from one config.

Compiling once keeps each machine small and the dispatch path to dict lookups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random as _random
from collections.abc import Callable
from typing import Any

from ._clock import SYSTEM_CLOCK, Clock
from ._config import (
    Hooks,
    StateMachineConfig,
    TimeoutConfig,
    coerce_config,
    invalid_config,
    transitions_of,
)
from ._effects import Effect
from ._observe import Observer
from ._retry import RetryPolicy
from ._validation import check_errors, check_warnings, failure_states_of, final_states_of

__all__ = ["CompiledTransition", "Definition", "compile_config"]

logger = logging.getLogger("deploysm")


class CompiledTransition:
    """One (source, event) candidate with its effect resolved."""

    __slots__ = ("compensable", "effect", "event", "guard", "index", "source", "to")

    def __init__(
        self,
        index: int,
        source: str,
        to: str,
        event: str,
        guard: Callable[..., Any] | None,
        effect: Effect[Any] | None,
    ) -> None:
        self.index = index
        self.source = source
        self.to = to
        self.event = event
        self.guard = guard
        self.effect = effect
        # committing it records a CommittedEffect, for compensate()
        self.compensable = (
            effect is not None and not effect.idempotent and effect.rollback is not None
        )


class Definition:
    """Everything a machine needs from its config, precomputed."""

    __slots__ = (
        "clock",
        "commit_hooks",
        "compensate_on_failure",
        "compensated_state",
        "config",
        "effect_by_index",
        "effect_timeout_s",
        "event_set",
        "events",
        "failures",
        "finals",
        "fingerprint",
        "history_limit",
        "hooks",
        "id",
        "index",
        "initial",
        "lease_ms",
        "leases",
        "load_state",
        "observer",
        "persist_state",
        "random",
        "redact_keys",
        "retry",
        "state_set",
        "state_timeout_s",
        "states",
        "store",
        "timeout_event",
        "transition_timeout_s",
        "transitions",
        "validate_context",
        "warnings",
    )

    def __init__(self, cfg: StateMachineConfig[Any, Any, Any]) -> None:
        self.config = cfg
        self.id: str = cfg.id
        self.states: tuple[str, ...] = tuple(cfg.states)
        self.state_set = frozenset(self.states)
        self.events: tuple[str, ...] = tuple(cfg.events)
        self.event_set = frozenset(self.events)
        self.initial: str = cfg.initial_state
        self.finals = final_states_of(cfg)
        self.failures = failure_states_of(cfg)
        effects = dict(cfg.effects or {})
        compiled: list[CompiledTransition] = []
        index: dict[str, dict[str, tuple[CompiledTransition, ...]]] = {}
        transitions = transitions_of(cfg)
        for i, t in enumerate(transitions):
            eff = t.effect if t.effect is not None else effects.get(t.to)
            for src in t.sources:
                ct = CompiledTransition(i, src, t.to, t.event, t.guard, eff)
                compiled.append(ct)
                by_event = index.setdefault(src, {})
                by_event[t.event] = (*by_event.get(t.event, ()), ct)
        self.transitions = tuple(compiled)
        self.effect_by_index: tuple[Effect[Any] | None, ...] = tuple(
            t.effect if t.effect is not None else effects.get(t.to) for t in transitions
        )
        self.index = index
        policy = cfg.retry_policy
        self.retry: RetryPolicy | None = policy if isinstance(policy, RetryPolicy) else None
        tc = cfg.timeout if isinstance(cfg.timeout, TimeoutConfig) else TimeoutConfig()
        self.effect_timeout_s = _seconds(tc.effect_timeout_ms)
        self.transition_timeout_s = _seconds(tc.transition_timeout_ms)
        self.state_timeout_s = _seconds(tc.state_timeout_ms)
        self.timeout_event: str | None = tc.timeout_event
        hooks = cfg.hooks if isinstance(cfg.hooks, Hooks) else Hooks()
        self.hooks = hooks
        self.commit_hooks = any(
            h is not None
            for h in (
                hooks.on_state_exit,
                hooks.on_transition,
                hooks.on_state_enter,
                hooks.on_metric,
            )
        )
        self.redact_keys = tuple(cfg.redact_keys) if cfg.redact_keys is not None else None
        self.observer = Observer(hooks, self.redact_keys)
        self.persist_state = cfg.persist_state
        self.load_state = cfg.load_state
        self.store = cfg.store
        # A machine on a runtime store leases itself while a transition is in flight
        # (``_lease``); a worker's machines write through their claim's lease instead.
        # (a runtime store is one that can renew leases: ``stores.RuntimeStore.renew``)
        self.leases = callable(getattr(cfg.store, "renew", None))
        self.lease_ms: int = cfg.lease_ms
        self.history_limit: int = cfg.history_limit
        self.clock: Clock = cfg.clock if cfg.clock is not None else SYSTEM_CLOCK
        self.random: _random.Random = cfg.random if cfg.random is not None else _random.Random()
        self.validate_context = cfg.validate_context
        self.compensated_state: str | None = cfg.compensated_state
        self.compensate_on_failure = bool(cfg.compensate_on_failure)
        self.fingerprint = fingerprint(cfg)
        self.warnings = check_warnings(cfg)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def fingerprint(cfg: StateMachineConfig[Any, Any, Any]) -> str:
    """A stable hash of the states, events and transitions (not of code)."""
    shape = {
        "initial": cfg.initial_state,
        "states": list(cfg.states),
        "events": list(cfg.events),
        "transitions": [
            [list(t.sources), t.to, t.event, t.guard is not None] for t in transitions_of(cfg)
        ],
    }
    raw = json.dumps(shape, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def compile_config(raw: Any) -> Definition:
    """Compile (once per config object) or raise ``INVALID_CONFIG`` listing every problem."""
    if isinstance(raw, StateMachineConfig) and raw._definition is not None:
        cached: Definition = raw._definition
        return cached
    cfg, problems = coerce_config(raw)
    if cfg is not None:
        problems = problems + check_errors(cfg)
    if cfg is None or problems:
        raise invalid_config(problems)
    definition = Definition(cfg)
    for w in definition.warnings:
        logger.warning("config %r: %s", definition.id, w)
    if isinstance(raw, StateMachineConfig):
        raw._definition = definition
    cfg._definition = definition
    return definition
