"""The records inside a machine's value: its status, the transition in flight, the
committed effects a compensation may undo. The snapshot (``durable``) stores them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ._types import Event

__all__ = ["STATUSES", "CommittedEffect", "InFlight", "Status"]

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
