"""The durable snapshot of a machine (format v2) and its strict validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..core._errors import ErrorCode, StateMachineError
from ..core._types import Event, State, StateMachineMetrics, StateMetrics
from ._codec import jsonable

if TYPE_CHECKING:
    from ._json import SnapshotJSON

__all__ = ["CommittedEffect", "InFlight", "SCHEMA_VERSION", "STATUSES", "SerializableState"]

SCHEMA_VERSION = 2
STATUSES = ("active", "completed", "failed", "cancelled", "needs_attention")
Status = Literal["active", "completed", "failed", "cancelled", "needs_attention"]


@dataclass(slots=True)
class InFlight:
    """A transition whose effect has started (``phase="running"``) or waits for its
    next attempt (``phase="retry_wait"`` until ``next_retry_at``)."""

    from_state: str
    to_state: str
    event: Event[Any]
    transition_index: int
    attempt: int
    idempotency_key: str
    started_at: datetime
    phase: Literal["running", "retry_wait"] = "running"
    next_retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CommittedEffect:
    """A committed non-idempotent effect, kept so ``compensate()`` can undo it."""

    state: str
    from_state: str
    event: str
    transition_index: int
    idempotency_key: str
    version: int


@dataclass(slots=True)
class SerializableState:
    """Everything needed to bring a machine back: ``to_dict()`` is JSON-safe.

    ``schema_version`` is the format it was read from (``from_dict``); ``to_dict()``
    always writes the current format."""

    current_state: State[Any]
    context: Any
    history: list[State[Any]]
    metrics: StateMachineMetrics
    version: int
    machine_id: str
    definition_id: str
    fingerprint: str
    status: Status = "active"
    in_flight: InFlight | None = None
    committed_effects: list[CommittedEffect] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    state_deadline: datetime | None = None
    schema_version: int = SCHEMA_VERSION
    # set only on the snapshots the engine hands its store (``build_snapshot(copy=False)``)
    _json: SnapshotJSON | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            **head_out(self),
            "history": [state_out(s) for s in self.history],
            "metrics": metrics_out(self.metrics, self.metrics.states),
            **tail_out(self),
        }

    def to_json(self) -> str:
        if self._json is not None:  # a store's snapshot: history encoded once, then reused
            return self._json.dumps(self)
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> SerializableState:
        """Validate and load; anything malformed is ``INVALID_SNAPSHOT``."""
        from ._load import load

        try:
            return load(data)
        except StateMachineError:
            raise
        except Exception as e:  # any shape problem becomes one typed error
            raise invalid(f"malformed snapshot: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> SerializableState:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, TypeError, RecursionError) as e:
            raise invalid(f"snapshot is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def coerce(cls, value: Any) -> SerializableState:
        """Accept a snapshot, its ``to_dict()`` form, or its JSON text."""
        if isinstance(value, SerializableState):
            try:
                data = value.to_dict()
            except Exception as e:
                raise invalid(f"malformed snapshot object: {type(e).__name__}: {e}") from e
            loaded = cls.from_dict(data)
            if value.schema_version in (1, SCHEMA_VERSION):  # the format it was read from
                loaded.schema_version = value.schema_version
            return loaded
        if isinstance(value, str | bytes | bytearray):
            return cls.from_json(bytes(value) if isinstance(value, bytearray) else value)
        return cls.from_dict(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a snapshot")


def invalid(msg: str) -> StateMachineError:
    return StateMachineError(msg, ErrorCode.INVALID_SNAPSHOT)


def _dt_out(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


# The parts of ``to_dict()``, in document order; ``_snapshot_json`` encodes the same
# parts one by one, so both must keep using these.


def head_out(s: SerializableState) -> dict[str, Any]:
    """The document's fields before ``history``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "machine_id": s.machine_id,
        "definition_id": s.definition_id,
        "fingerprint": s.fingerprint,
        "status": s.status,
        "version": s.version,
        "current_state": state_out(s.current_state),
        "context": s.context,
    }


def tail_out(s: SerializableState) -> dict[str, Any]:
    """The document's fields after ``metrics``."""
    return {
        "in_flight": _in_flight_out(s.in_flight) if s.in_flight else None,
        "committed_effects": [
            {
                "state": c.state,
                "from_state": c.from_state,
                "event": c.event,
                "transition_index": c.transition_index,
                "idempotency_key": c.idempotency_key,
                "version": c.version,
            }
            for c in s.committed_effects
        ],
        "last_error": s.last_error,
        "state_deadline": _dt_out(s.state_deadline),
    }


def state_out(s: State[Any]) -> dict[str, Any]:
    return {
        "name": s.name,
        "data": jsonable(s.data),
        "timestamp": s.timestamp.isoformat(),
        "version": s.version,
        "attempts": s.attempts,
        "idempotency_key": s.idempotency_key,
    }


def visit_out(v: StateMetrics) -> dict[str, Any]:
    return {
        "state": v.state,
        "entered_at": v.entered_at.isoformat(),
        "exited_at": _dt_out(v.exited_at),
        "duration_ms": v.duration_ms,
        "attempts": v.attempts,
        "errors": v.errors,
    }


def metrics_out(m: StateMachineMetrics, visits: list[StateMetrics]) -> dict[str, Any]:
    """``m`` with ``visits`` as its ``states``."""
    return {
        "states": [visit_out(v) for v in visits],
        "total_duration_ms": m.total_duration_ms,
        "total_transitions": m.total_transitions,
        "total_retries": m.total_retries,
        "total_attempts": m.total_attempts,
        "total_errors": m.total_errors,
        "is_complete": m.is_complete,
        "is_failed": m.is_failed,
        "is_cancelled": m.is_cancelled,
        "current_state": m.current_state,
        "total_rollbacks": m.total_rollbacks,
        "total_compensations": m.total_compensations,
        "started_at": _dt_out(m.started_at),
        "per_state": {
            name: {
                "visits": t.visits,
                "duration_ms": t.duration_ms,
                "attempts": t.attempts,
                "errors": t.errors,
            }
            for name, t in m.per_state.items()
        },
    }


def _event_out(e: Event[Any]) -> dict[str, Any]:
    return {
        "type": e.type,
        "payload": jsonable(e.payload),
        "timestamp": e.timestamp.isoformat(),
        "correlation_id": e.correlation_id,
    }


def _in_flight_out(f: InFlight) -> dict[str, Any]:
    return {
        "from_state": f.from_state,
        "to_state": f.to_state,
        "event": _event_out(f.event),
        "transition_index": f.transition_index,
        "attempt": f.attempt,
        "idempotency_key": f.idempotency_key,
        "started_at": f.started_at.isoformat(),
        "phase": f.phase,
        "next_retry_at": _dt_out(f.next_retry_at),
    }
