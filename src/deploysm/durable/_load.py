"""Loading a snapshot: every field checked, with its path in the message."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from ..core._history import totals_of
from ..core._records import STATUSES, CommittedEffect, InFlight
from ..core._retry import is_finite_number
from ..core._types import Event, State, StateMachineMetrics, StateMetrics, StateTotals
from ._codec import jsonable
from ._format import SCHEMA_VERSION, invalid

__all__ = ["Reader", "load", "state_in"]

_invalid = invalid
T = TypeVar("T")

MAX_INT = 2**63 - 1  # the stores keep the version in a signed 64-bit column


class _Reader:
    """One JSON object, read field by field; a bad field names its path."""

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
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= MAX_INT:
            raise _invalid(f"{self.path}.{key} must be an integer >= {minimum} and < 2^63")
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


def state_in(r: _Reader) -> State[Any]:
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


def _per_state_in(m: _Reader) -> dict[str, StateTotals]:
    per = m.sub("per_state")
    out = {}
    for name in per.data:
        if not isinstance(name, str):
            raise _invalid(f"{per.path} keys must be state names")
        t = per.sub(name)
        out[name] = StateTotals(
            visits=t.integer("visits"),
            duration_ms=t.number("duration_ms"),
            attempts=t.integer("attempts"),
            errors=t.integer("errors"),
        )
    return out


def load(data: Any, make: Callable[..., T]) -> T:
    """The snapshot in ``data``, checked, built by ``make`` (``SerializableState``)."""
    r = _Reader(data, "snapshot")
    sv = r.integer("schema_version", minimum=0)
    if sv not in (1, SCHEMA_VERSION):
        raise _invalid(
            f"snapshot schema_version {sv} is not supported (expected 1 or {SCHEMA_VERSION})"
        )
    status: Any = r.text("status")
    if status not in STATUSES:
        raise _invalid(f"snapshot.status {status!r} is not one of {', '.join(STATUSES)}")
    history = [
        state_in(_Reader(h, f"snapshot.history[{i}]")) for i, h in enumerate(r.items("history"))
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
    if sv == 1:  # every visit is there: the totals follow from them
        metrics.per_state = totals_of(visits)
        metrics.started_at = visits[0].entered_at if visits else None
    else:
        metrics.started_at = m.time("started_at", optional=True)
        metrics.per_state = _per_state_in(m)
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
    current = state_in(r.sub("current_state"))
    if not visits or visits[-1].state != current.name:
        raise _invalid("snapshot.metrics.states must end with a visit of the current state")
    return make(
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


Reader = _Reader
