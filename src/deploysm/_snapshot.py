"""The durable snapshot of a machine (format v1) and its strict validation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._codec import jsonable
from ._errors import ErrorCode, StateMachineError
from ._retry import is_finite_number
from ._types import Event, State, StateMachineMetrics, StateMetrics

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
        try:
            return _load(data)
        except StateMachineError:
            raise
        except Exception as e:  # any shape problem becomes one typed error
            raise _invalid(f"malformed snapshot: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> SerializableState:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, TypeError, RecursionError) as e:
            raise _invalid(f"snapshot is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def coerce(cls, value: Any) -> SerializableState:
        """Accept a snapshot, its ``to_dict()`` form, or its JSON text."""
        if isinstance(value, SerializableState):
            try:
                data = value.to_dict()
            except Exception as e:
                raise _invalid(f"malformed snapshot object: {type(e).__name__}: {e}") from e
            return cls.from_dict(data)
        if isinstance(value, str | bytes | bytearray):
            return cls.from_json(bytes(value) if isinstance(value, bytearray) else value)
        return cls.from_dict(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a snapshot")


def _invalid(msg: str) -> StateMachineError:
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


# --- loading: every field checked, with the path in the message --------------------


class _Reader:
    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise _invalid(f"{path} must be an object, got {type(data).__name__}")
        self.data = data
        self.path = path

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise _invalid(f"{self.path}.{key} is missing")
        return self.data[key]

    def text(self, key: str, optional: bool = False) -> Any:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise _invalid(f"{self.path}.{key} must be a string")
        return v

    def integer(self, key: str, minimum: int = 0, optional: bool = False) -> Any:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise _invalid(f"{self.path}.{key} must be an integer >= {minimum}")
        return v

    def number(self, key: str, optional: bool = False) -> Any:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if not is_finite_number(v):
            raise _invalid(f"{self.path}.{key} must be a finite number")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self._get(key, True)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise _invalid(f"{self.path}.{key} must be true or false")
        return v

    def time(self, key: str, optional: bool = False) -> Any:
        v = self.text(key, optional)
        if v is None:
            return None
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            raise _invalid(f"{self.path}.{key} is not an ISO-8601 time") from None
        if d.tzinfo is None:
            raise _invalid(f"{self.path}.{key} must carry a time zone")
        return d

    def items(self, key: str) -> list[Any]:
        v = self._get(key, False)
        if not isinstance(v, list):
            raise _invalid(f"{self.path}.{key} must be a list")
        return v

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key, False), f"{self.path}.{key}")


def _state_in(r: _Reader) -> State[Any]:
    data = r.data.get("data", {})
    if not isinstance(data, Mapping):
        raise _invalid(f"{r.path}.data must be an object")
    _json_safe(data, f"{r.path}.data")
    return State(
        name=r.text("name"),
        data=dict(data),
        timestamp=r.time("timestamp"),
        version=r.integer("version"),
        attempts=r.integer("attempts", optional=True) or 0,
        idempotency_key=r.text("idempotency_key", optional=True),
    )


def _json_safe(value: Any, path: str) -> None:
    try:
        jsonable(value)
    except TypeError as e:
        raise _invalid(f"{path} cannot be stored as JSON: {e}") from None


def _event_in(r: _Reader) -> Event[Any]:
    _json_safe(r.data.get("payload"), f"{r.path}.payload")
    return Event(
        type=r.text("type"),
        payload=r.data.get("payload"),
        timestamp=r.time("timestamp"),
        correlation_id=r.text("correlation_id", optional=True),
    )


def _load(data: Any) -> SerializableState:
    r = _Reader(data, "snapshot")
    sv = r.integer("schema_version", minimum=0)
    if sv != SCHEMA_VERSION:
        raise _invalid(f"snapshot schema_version {sv} is not supported (expected {SCHEMA_VERSION})")
    status: Any = r.text("status")
    if status not in STATUSES:
        raise _invalid(f"snapshot.status {status!r} is not one of {', '.join(STATUSES)}")
    history = [
        _state_in(_Reader(h, f"snapshot.history[{i}]")) for i, h in enumerate(r.items("history"))
    ]
    m = r.sub("metrics")
    visits = []
    for i, v in enumerate(m.items("states")):
        vr = _Reader(v, f"snapshot.metrics.states[{i}]")
        visits.append(
            StateMetrics(
                state=vr.text("state"),
                entered_at=vr.time("entered_at"),
                exited_at=vr.time("exited_at", optional=True),
                duration_ms=vr.number("duration_ms", optional=True),
                attempts=vr.integer("attempts"),
                errors=vr.integer("errors"),
            )
        )
    metrics = StateMachineMetrics(
        states=visits,
        total_duration_ms=m.number("total_duration_ms"),
        total_transitions=m.integer("total_transitions"),
        total_retries=m.integer("total_retries"),
        total_attempts=m.integer("total_attempts"),
        total_errors=m.integer("total_errors"),
        is_complete=m.flag("is_complete"),
        is_failed=m.flag("is_failed"),
        is_cancelled=m.flag("is_cancelled"),
        current_state=m.text("current_state", optional=True),
        total_rollbacks=m.integer("total_rollbacks", optional=True) or 0,
        total_compensations=m.integer("total_compensations", optional=True) or 0,
    )
    in_flight = None
    if r.data.get("in_flight") is not None:
        f = r.sub("in_flight")
        phase = f.text("phase")
        if phase not in ("running", "retry_wait"):
            raise _invalid("snapshot.in_flight.phase must be 'running' or 'retry_wait'")
        in_flight = InFlight(
            from_state=f.text("from_state"),
            to_state=f.text("to_state"),
            event=_event_in(f.sub("event")),
            transition_index=f.integer("transition_index"),
            attempt=f.integer("attempt", minimum=1),
            idempotency_key=f.text("idempotency_key"),
            started_at=f.time("started_at"),
            phase=phase,
            next_retry_at=f.time("next_retry_at", optional=True),
        )
    committed = []
    for i, c in enumerate(r.items("committed_effects")):
        cr = _Reader(c, f"snapshot.committed_effects[{i}]")
        committed.append(
            CommittedEffect(
                state=cr.text("state"),
                from_state=cr.text("from_state"),
                event=cr.text("event"),
                transition_index=cr.integer("transition_index"),
                idempotency_key=cr.text("idempotency_key"),
                version=cr.integer("version"),
            )
        )
    last_error = r.data.get("last_error")
    if last_error is not None and not isinstance(last_error, Mapping):
        raise _invalid("snapshot.last_error must be an object or null")
    if "context" not in r.data:
        raise _invalid("snapshot.context is missing")
    _json_safe(r.data["context"], "snapshot.context")
    _json_safe(r.data.get("last_error"), "snapshot.last_error")
    current = _state_in(r.sub("current_state"))
    if not visits or visits[-1].state != current.name:
        raise _invalid("snapshot.metrics.states must end with a visit of the current state")
    return SerializableState(
        current_state=current,
        context=r.data["context"],
        history=history,
        metrics=metrics,
        version=r.integer("version"),
        machine_id=r.text("machine_id"),
        definition_id=r.text("definition_id"),
        fingerprint=r.text("fingerprint"),
        status=status,
        in_flight=in_flight,
        committed_effects=committed,
        last_error=dict(last_error) if last_error is not None else None,
        state_deadline=r.time("state_deadline", optional=True),
        schema_version=sv,
    )
