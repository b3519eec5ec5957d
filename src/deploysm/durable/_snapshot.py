"""The durable snapshot of a machine (format v2) and its strict validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core._errors import StateMachineError
from ..core._records import STATUSES, CommittedEffect, InFlight, Status
from ..core._types import State, StateMachineMetrics
from ._format import (
    SCHEMA_VERSION,
    committed_record,
    head_out,
    invalid,
    metrics_out,
    reject_constant,
    state_out,
    tail_out,
)
from ._json import SnapshotJSON
from ._load import load

__all__ = [
    "CommittedEffect",
    "InFlight",
    "SCHEMA_VERSION",
    "STATUSES",
    "SerializableState",
    "Status",
    "committed_record",
]


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
        try:
            return load(data, cls)
        except StateMachineError:
            raise
        except Exception as e:  # any shape problem becomes one typed error
            raise invalid(f"malformed snapshot: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> SerializableState:
        try:
            data = json.loads(text, parse_constant=reject_constant)
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
