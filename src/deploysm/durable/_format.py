"""The snapshot document (format v2): how each part of it is written.

``SerializableState.to_dict()`` and the JSON cache (``_json``) both build the document
from these functions, in document order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from ..core._errors import ErrorCode, StateMachineError
from ..core._records import CommittedEffect, InFlight
from ..core._types import Event, State, StateMachineMetrics, StateMetrics
from ._codec import jsonable

__all__ = [
    "SCHEMA_VERSION",
    "Document",
    "committed_record",
    "head_out",
    "invalid",
    "metrics_out",
    "reject_constant",
    "state_out",
    "tail_out",
    "visit_out",
]

SCHEMA_VERSION = 2


class Document(Protocol):
    """What the document is written from (a ``SerializableState``)."""

    @property
    def machine_id(self) -> str: ...
    @property
    def definition_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def current_state(self) -> State[Any]: ...
    @property
    def context(self) -> Any: ...
    @property
    def history(self) -> list[State[Any]]: ...
    @property
    def metrics(self) -> StateMachineMetrics: ...
    @property
    def in_flight(self) -> InFlight | None: ...
    @property
    def committed_effects(self) -> list[CommittedEffect]: ...
    @property
    def last_error(self) -> dict[str, Any] | None: ...
    @property
    def state_deadline(self) -> datetime | None: ...


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a snapshot")


def invalid(msg: str) -> StateMachineError:
    return StateMachineError(msg, ErrorCode.INVALID_SNAPSHOT)


def _dt_out(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def head_out(s: Document) -> dict[str, Any]:
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


def tail_out(s: Document) -> dict[str, Any]:
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


def committed_record(
    left: State[Any], to: str, event: str | None, attempts: int, key: str | None
) -> dict[str, Any]:
    """The data of a ``committed`` journal record: the transition, and the state it left
    (``exited``, as in a snapshot's ``history``), so the journal keeps every one."""
    return {
        "source": left.name,
        "to": to,
        "event": event,
        "attempts": attempts,
        "key": key,
        "exited": state_out(left),
    }
