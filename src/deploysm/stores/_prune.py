"""Retention: ``prune(older_than)`` of every store (``deploysm prune --older-than 30d``).

What goes, once older than ``older_than``:

* the journal entries of *finished* machines (completed, failed, cancelled), by the
  entry's own time ``at``. A live machine (active, needs_attention) keeps its whole
  journal: recovery and operators read its tail, and it is bounded by the machine's
  own life;
* delivered inbox events, by their delivery time. An undelivered event is never
  removed. A removed event's id is forgotten: the same id sent again is a new event
  (to a live machine) or ``NOT_ACTIVE`` (to a finished one), so de-duplication holds
  for ``older_than`` after delivery; keep it longer than any sender retries.

Machines themselves (their snapshots) stay.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..core._errors import ErrorCode, StateMachineError

__all__ = ["FINISHED", "PruneCounts", "check_age", "cutoff", "prune_sqlite"]

FINISHED = ("completed", "failed", "cancelled")
_OLDEST = timedelta(days=100_000)  # ~273 years: older than any row, and still a date

_JOURNAL = (
    "DELETE FROM journal WHERE at < ?1 AND machine_id IN"
    " (SELECT id FROM machines WHERE status IN ('completed', 'failed', 'cancelled'))"
)
_INBOX = "DELETE FROM inbox WHERE delivered_at IS NOT NULL AND delivered_at < ?1"


@dataclass(frozen=True, slots=True)
class PruneCounts:
    """What ``prune`` removed."""

    journal: int  # journal entries of finished machines
    inbox: int  # delivered events


def check_age(older_than: Any) -> timedelta:
    """``older_than`` if it is a ``timedelta`` >= 0 (capped at ~273 years), else
    ``INVALID_DURATION``."""
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise StateMachineError(
            f"older_than must be a timedelta >= 0, not {older_than!r}", ErrorCode.INVALID_DURATION
        )
    return min(older_than, _OLDEST)


def cutoff(older_than: Any) -> datetime:
    """Now (UTC) minus ``older_than``: what is older than that goes."""
    return datetime.now(UTC) - check_age(older_than)


def prune_sqlite(conn: sqlite3.Connection, before: str) -> PruneCounts:
    """The SQLite prune, one write operation; ``before`` as ``utc_text``."""
    journal = conn.execute(_JOURNAL, (before,)).rowcount
    return PruneCounts(journal, conn.execute(_INBOX, (before,)).rowcount)
