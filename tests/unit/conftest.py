"""Shared helpers for the engine unit tests: the seed's simple flow on a virtual clock."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from deploysm import (
    RetryPolicy,
    SerializableState,
    StateMachineConfig,
    Transition,
    default_retry_policy,
)
from deploysm.testing import VirtualClock

STATES = ["idle", "validating", "deploying", "completed", "failed"]
EVENTS = ["START", "VALIDATED", "DEPLOYED", "FAIL"]


def simple_transitions() -> list[Transition[Any, Any]]:
    """The seed's "Simple Deployment Flow" transitions."""
    return [
        Transition(from_="idle", to="validating", event="START"),
        Transition(from_="validating", to="deploying", event="VALIDATED"),
        Transition(from_="deploying", to="completed", event="DEPLOYED"),
        Transition(from_=["validating", "deploying"], to="failed", event="FAIL"),
    ]


def simple_config(*, clock: VirtualClock | None = None, **overrides: Any) -> StateMachineConfig:
    """A fresh config of the seed's simple flow; any field may be overridden."""
    values: dict[str, Any] = {
        "id": "deployment-workflow",
        "initial_state": "idle",
        "states": list(STATES),
        "events": list(EVENTS),
        "transitions": simple_transitions(),
        "clock": clock if clock is not None else VirtualClock(),
        "random": random.Random(1),
    }
    values.update(overrides)
    return StateMachineConfig(**values)


class Persisted:
    """A ``persist_state`` that keeps a JSON copy of every snapshot it is given."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self.log = log

    def __call__(self, snapshot: SerializableState) -> None:
        assert isinstance(snapshot, SerializableState)
        self.snapshots.append(json.loads(snapshot.to_json()))
        if self.log is not None:
            self.log.append("persist")

    @property
    def last(self) -> dict[str, Any]:
        return self.snapshots[-1]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def make_config(clock: VirtualClock) -> Callable[..., StateMachineConfig]:
    """``make_config(**overrides)``: the simple flow on this test's virtual clock."""

    def make(**overrides: Any) -> StateMachineConfig:
        overrides.setdefault("clock", clock)
        return simple_config(**overrides)

    return make


@pytest.fixture
def persisted() -> Persisted:
    return Persisted()


@pytest.fixture
def make_persisted() -> type[Persisted]:
    """The ``Persisted`` class, for tests that need more than one store."""
    return Persisted


@pytest.fixture
def fast_retry() -> Callable[..., RetryPolicy]:
    """``fast_retry(max_attempts, **changes)``: jitter-free delays of 100 ms, 200 ms, ..."""

    def make(max_attempts: int = 3, **changes: Any) -> RetryPolicy:
        return default_retry_policy.replace(
            max_attempts=max_attempts,
            initial_delay_ms=100.0,
            max_delay_ms=10_000.0,
            backoff_multiplier=2.0,
            jitter_factor=0.0,
        ).replace(**changes)

    return make
