"""The value types of the public API: states, events, results, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from ._clock import now as _now
from ._fastinit import maker

__all__ = [
    "EffectResult",
    "Event",
    "State",
    "StateMachineMetrics",
    "StateMetrics",
    "StateTotals",
    "TransitionResult",
]

S = TypeVar("S", bound=str)
E = TypeVar("E", bound=str)

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class State(Generic[S]):
    """One state the machine is (or was) in.

    ``data`` records what entered it (the event payload, the effect's message
    and metadata). An effect receives the *target* state, with ``attempts`` set
    to the current attempt (from 1) and the transition's ``idempotency_key``.
    """

    name: S
    data: Mapping[str, Any]
    timestamp: datetime
    version: int
    attempts: int = 0
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Event(Generic[E]):
    """Something that happened. ``timestamp`` defaults to the machine clock's now.

    An event built without a timestamp takes the machine clock's time when it is
    dispatched (``auto_timestamp`` is then true).
    """

    type: E
    payload: Any = None
    timestamp: datetime = _UNSET
    correlation_id: str | None = None
    auto_timestamp: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.timestamp is _UNSET:
            object.__setattr__(self, "timestamp", _now())
            object.__setattr__(self, "auto_timestamp", True)


@dataclass(frozen=True, slots=True)
class EffectResult:
    """What an effect reports. Returning ``None`` from an effect means success."""

    success: bool
    message: str | None = None
    metadata: Mapping[str, Any] | None = None
    can_retry: bool | None = None


@dataclass(frozen=True, slots=True)
class TransitionResult(Generic[S]):
    """The outcome of one ``dispatch``; ``dispatch`` never raises for effect failures."""

    success: bool
    new_state: State[S]
    error: BaseException | None = None
    effect_result: EffectResult | None = None


@dataclass(slots=True)
class StateMetrics:
    """One visit of a state: a state entered twice has two of these.

    ``attempts`` and ``errors`` count the effect attempts (and the failed ones)
    made to enter this visit; failed transitions out of it add to its ``errors``.
    """

    state: str
    entered_at: datetime
    exited_at: datetime | None = None
    duration_ms: float | None = None
    attempts: int = 0
    errors: int = 0


@dataclass(slots=True)
class StateTotals:
    """One state's totals over a machine's whole life (``StateMachineMetrics.per_state``).

    ``visits``: times entered (the current visit included); ``duration_ms``: time spent
    in its finished visits; ``attempts``/``errors``: summed over its visits."""

    visits: int = 0
    duration_ms: float = 0.0
    attempts: int = 0
    errors: int = 0


@dataclass(slots=True)
class StateMachineMetrics:
    """Totals for one machine; ``states`` holds one entry per visit, in order.

    ``states`` is the recent window: the current visit and at most the config's
    ``history_limit`` visits before it (older ones drop off the front). The totals
    (``total_transitions``, ...) and ``per_state`` (each state's :class:`StateTotals`)
    cover the machine's whole life; ``started_at`` is when it entered its first state.
    """

    states: list[StateMetrics] = field(default_factory=list)
    total_duration_ms: float = 0.0
    total_transitions: int = 0
    total_retries: int = 0
    total_attempts: int = 0
    total_errors: int = 0
    is_complete: bool = False
    is_failed: bool = False
    is_cancelled: bool = False
    current_state: str | None = None
    total_rollbacks: int = 0
    total_compensations: int = 0
    per_state: dict[str, StateTotals] = field(default_factory=dict)
    started_at: datetime | None = None


# Positional builders for the engine's hot path (every field, in declaration order);
# see ``_fastinit``. Users build these types with their ordinary constructors.
make_state = maker(State)
make_event = maker(Event)
make_result = maker(TransitionResult)
