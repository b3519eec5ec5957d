"""Turning what callers dispatch (an Event, a name, a mapping) into an ``Event``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import ErrorCode, StateMachineError
from ._types import Event, make_event

__all__ = ["coerce_event"]

_EVENT_KEYS = frozenset({"type", "payload", "timestamp", "correlation_id"})


def coerce_event(event: Any, clock: Clock) -> Event[Any]:
    """An ``Event`` stamped with ``clock`` when it carries no time of its own;
    anything malformed raises ``INVALID_EVENT``."""
    if isinstance(event, str):
        if not event:
            raise StateMachineError(
                "event type must be a non-empty string", ErrorCode.INVALID_EVENT
            )
        return make_event(event, None, clock.now(), None, False)
    if isinstance(event, Event):
        if not isinstance(event.type, str) or not event.type:
            raise StateMachineError(
                "event type must be a non-empty string", ErrorCode.INVALID_EVENT
            )
        if event.correlation_id is not None and not isinstance(event.correlation_id, str):
            raise StateMachineError(
                "event correlation_id must be a string", ErrorCode.INVALID_EVENT
            )
        if event.auto_timestamp and clock is not SYSTEM_CLOCK:
            return Event(event.type, event.payload, clock.now(), event.correlation_id)
        ts = event.timestamp
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise StateMachineError(
                "event timestamp must be an aware datetime", ErrorCode.INVALID_EVENT
            )
        return event
    if isinstance(event, Mapping):
        return _from_mapping(event, clock)
    raise StateMachineError(
        f"cannot dispatch a {type(event).__name__}: pass an Event, an event name, or a "
        "mapping with a 'type' key",
        ErrorCode.INVALID_EVENT,
    )


def _from_mapping(event: Mapping[Any, Any], clock: Clock) -> Event[Any]:
    etype = event.get("type")
    if not isinstance(etype, str) or not etype:
        raise StateMachineError("event 'type' must be a non-empty string", ErrorCode.INVALID_EVENT)
    unknown = sorted(repr(k) for k in event if k not in _EVENT_KEYS)
    if unknown:
        raise StateMachineError(
            f"unknown event key(s): {', '.join(unknown)}", ErrorCode.INVALID_EVENT
        )
    ts = event.get("timestamp")
    if ts is None:
        ts = clock.now()
    elif not isinstance(ts, datetime) or ts.tzinfo is None:
        raise StateMachineError(
            "event 'timestamp' must be an aware datetime", ErrorCode.INVALID_EVENT
        )
    cid = event.get("correlation_id")
    if cid is not None and not isinstance(cid, str):
        raise StateMachineError("event 'correlation_id' must be a string", ErrorCode.INVALID_EVENT)
    return Event(etype, event.get("payload"), ts, cid)
