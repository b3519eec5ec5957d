"""The durable snapshot of a machine (format v1) and its strict validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._codec import jsonable
from ._errors import ErrorCode, StateMachineError
from ._types import Event, State, StateMachineMetrics

__all__ = ["CommittedEffect", "InFlight", "SCHEMA_VERSION", "STATUSES", "SerializableState"]

SCHEMA_VERSION = 1
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
    """Everything needed to bring a machine back: ``to_dict()`` is JSON-safe."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "machine_id": self.machine_id,
            "definition_id": self.definition_id,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "version": self.version,
            "current_state": _state_out(self.current_state),
            "context": self.context,
            "history": [_state_out(s) for s in self.history],
            "metrics": _metrics_out(self.metrics),
            "in_flight": _in_flight_out(self.in_flight) if self.in_flight else None,
            "committed_effects": [
                {
                    "state": c.state,
                    "from_state": c.from_state,
                    "event": c.event,
                    "transition_index": c.transition_index,
                    "idempotency_key": c.idempotency_key,
                    "version": c.version,
                }
                for c in self.committed_effects
            ],
            "last_error": self.last_error,
            "state_deadline": _dt_out(self.state_deadline),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> SerializableState:
        """Validate and load; anything malformed is ``INVALID_SNAPSHOT``."""
        from ._snapshot_load import load

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
            return cls.from_dict(data)
        if isinstance(value, str | bytes | bytearray):
            return cls.from_json(bytes(value) if isinstance(value, bytearray) else value)
        return cls.from_dict(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a snapshot")


def invalid(msg: str) -> StateMachineError:
    return StateMachineError(msg, ErrorCode.INVALID_SNAPSHOT)


def _dt_out(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def _state_out(s: State[Any]) -> dict[str, Any]:
    return {
        "name": s.name,
        "data": jsonable(s.data),
        "timestamp": s.timestamp.isoformat(),
        "version": s.version,
        "attempts": s.attempts,
        "idempotency_key": s.idempotency_key,
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


def _metrics_out(m: StateMachineMetrics) -> dict[str, Any]:
    return {
        "states": [
            {
                "state": v.state,
                "entered_at": v.entered_at.isoformat(),
                "exited_at": _dt_out(v.exited_at),
                "duration_ms": v.duration_ms,
                "attempts": v.attempts,
                "errors": v.errors,
            }
            for v in m.states
        ],
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
    }
