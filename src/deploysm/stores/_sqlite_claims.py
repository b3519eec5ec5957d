"""Claims and leases in ``SQLiteStore``: which machines have work, taking their leases,
renewing them, and whose live lease keeps a machine from a claim.

A machine has work when it is active and was never run, has a transition in flight,
a cancel request, a due timer or an undelivered event; each source is read on an
index of its own (``_WORK``). ``claim_op`` and ``renew_op`` run on the writer thread,
in its ``BEGIN IMMEDIATE`` transaction (so two claims never interleave); the reads
(``leased_op``, ``probe``) run on the reader connection.

Lease and timer times (``lease_expires_at``, ``wake_at``) are INTEGER microseconds
since the Unix epoch, from the wall clock (UTC): exact, and integers compare the way
time runs. Processes sharing a file share the host's clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..core._errors import StateMachineError
from ..durable._snapshot import SerializableState
from ._parking import parked_error
from ._runtime import Claim
from ._sqlite_parking import ErrorColumn, park_unreadable

__all__ = [
    "claim_op",
    "data_version",
    "from_us",
    "leased_op",
    "now_us",
    "probe",
    "renew_op",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_WORK = """
WITH work(id) AS (
    SELECT id FROM machines INDEXED BY machines_pending
     WHERE status = 'active' AND (snapshot IS NULL OR busy = 1 OR cancel_requested = 1)
    UNION SELECT id FROM machines WHERE wake_at IS NOT NULL AND wake_at <= :now
    UNION SELECT machine_id FROM inbox WHERE delivered_at IS NULL
)
"""
_OF = "AND coalesce(nullif(m.workflow, ''), m.definition_id) IN (SELECT value FROM json_each(:wfs))"
_CANDIDATES = (
    _WORK
    + """SELECT m.id, m.workflow, m.definition_id, m.snapshot, m.start_context,
       m.cancel_requested, m.lease_owner
  FROM work JOIN machines AS m ON m.id = work.id
 WHERE m.status = 'active'
   AND (m.lease_owner IS NULL OR m.lease_expires_at IS NULL OR m.lease_expires_at <= :now)
   {}
 ORDER BY m.id LIMIT :limit
"""
)
_ANY_WORKFLOW = _CANDIDATES.format("")
_OF_WORKFLOWS = _CANDIDATES.format(_OF)
# The machines a claim would take but for another owner's live lease.
_LEASED_ELSEWHERE = (
    _WORK
    + """SELECT m.id, m.lease_owner, m.lease_expires_at
  FROM work JOIN machines AS m ON m.id = work.id
 WHERE m.status = 'active' AND m.lease_owner IS NOT NULL AND m.lease_owner <> :worker
   AND m.lease_expires_at > :now {}
 ORDER BY m.id
"""
)
_TAKE = (
    "UPDATE machines SET lease_owner = ?, lease_expires_at = ?,"
    " fencing_token = fencing_token + 1, wake_at = NULL WHERE id = ? RETURNING fencing_token"
)
_RENEW = (
    "UPDATE machines SET lease_expires_at = ? WHERE id = ? AND fencing_token = ?"
    " AND lease_owner = ?"
)


def now_us() -> int:
    """The wall clock in microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


def to_us(d: datetime) -> int:
    """``d`` in microseconds since the Unix epoch; a naive datetime is taken as UTC."""
    return ((d.replace(tzinfo=UTC) if d.tzinfo is None else d) - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the Unix epoch."""
    return _EPOCH + us * _US


def _candidates(conn: sqlite3.Connection, now: int, limit: int, workflows: str | None) -> list[Any]:
    if workflows is None:
        return conn.execute(_ANY_WORKFLOW, {"now": now, "limit": limit}).fetchall()
    args = {"now": now, "limit": limit, "wfs": workflows}
    return conn.execute(_OF_WORKFLOWS, args).fetchall()


def claim_op(
    conn: sqlite3.Connection,
    decode: Callable[[str, Any], SerializableState],
    context_of: Callable[[str, Any], Any],
    error_of: ErrorColumn,
    worker_id: str,
    limit: int,
    lease_ms: int,
    workflows: str | None,
) -> list[Claim]:
    now = now_us()
    until = now + int(lease_ms * 1000)
    rows = _candidates(conn, now, limit, workflows)
    out: list[Claim] = []
    for mid, workflow, definition_id, blob, context, cancel, old in rows:
        try:
            snap = None if blob is None else decode(mid, blob)
            ctx = None if context is None else context_of(mid, context)
        except StateMachineError as e:  # unreadable: parked, the others are claimed
            park_unreadable(conn, mid, e, error_of(mid, parked_error(e)))
            continue
        ((token,),) = conn.execute(_TAKE, (worker_id, until, mid)).fetchall()
        out.append(Claim(mid, workflow or definition_id, token, snap, ctx, bool(cancel), old))
    return out


def renew_op(
    conn: sqlite3.Connection, worker_id: str, leases: dict[str, int], lease_ms: int
) -> set[str]:
    until = now_us() + int(lease_ms * 1000)
    return {
        mid
        for mid, token in leases.items()
        if conn.execute(_RENEW, (until, mid, token, worker_id)).rowcount != 1
    }


def leased_op(
    conn: sqlite3.Connection, worker_id: str, wfs: str | None
) -> list[tuple[str, str, datetime]]:
    args = {"now": now_us(), "worker": worker_id}
    if wfs is None:
        rows = conn.execute(_LEASED_ELSEWHERE.format(""), args).fetchall()
    else:
        rows = conn.execute(_LEASED_ELSEWHERE.format(_OF), {**args, "wfs": wfs}).fetchall()
    return [(mid, owner, from_us(until)) for mid, owner, until in rows]


def data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def probe(conn: sqlite3.Connection, wfs: str | None) -> tuple[int, bool]:
    """(data_version, whether a claim of workflows ``wfs`` would take a machine now).
    The version is read first, so no commit after it is missed."""
    version = data_version(conn)
    return version, bool(_candidates(conn, now_us(), 1, wfs))
