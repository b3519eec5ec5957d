"""A save of ``SQLiteStore`` as one operation of the writer thread (``_sqlite_writer``).

``SaveOp`` runs in the batch's transaction, in a SAVEPOINT of its own: the
compare-and-set of the snapshot (one ``INSERT``/``UPDATE`` that also checks or takes
the lease, see ``_save_sql``), its journal rows and the delivery of the inbox events
it consumed, all or nothing. When the statement writes no row, ``_refusal`` reads why:
a lost lease (``LEASE_LOST``), another worker's live lease (``LEASE_HELD``), or a
stale version (``CONFLICT``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from ..core._errors import StateMachineError
from ._base import conflict
from ._runtime import Lease, LeaseHeld, lease_lost
from ._sqlite_claims import now_us

__all__ = ["SaveOp", "journal_json"]

# Parameters: ?1 id, ?2 workflow, ?3 definition_id, ?4 status, ?5 state, ?6 version,
# ?7 snapshot, ?8 at, ?9 busy, ?10 expected version, ?11 token (or now, without one),
# ?12 lease owner, ?13 its expiry, ?14 token increment, ?15 an owner to evict,
# ?16 the last error (text, or sealed bytes).
_COLUMNS = (
    "id, workflow, definition_id, status, state, version, snapshot, created_at, updated_at, busy,"
    " last_error"
)
_INSERT = (
    f"INSERT INTO machines ({_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?16)"
    " ON CONFLICT (id) DO NOTHING RETURNING fencing_token"
)
_INSERT_HOLDING = (
    f"INSERT INTO machines ({_COLUMNS}, lease_owner, lease_expires_at, fencing_token)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?16, ?12, ?13, ?14)"
    " ON CONFLICT (id) DO NOTHING RETURNING fencing_token"
)
_UPDATE = (
    "UPDATE machines SET workflow = coalesce(?2, workflow), definition_id = ?3, status = ?4,"
    " state = ?5, version = ?6, snapshot = ?7, updated_at = ?8, busy = ?9, last_error = ?16"
)
_HOLD = ", lease_owner = ?12, lease_expires_at = ?13, fencing_token = fencing_token + ?14"
_FREE = ", lease_owner = NULL, lease_expires_at = NULL"
_WHERE = " WHERE id = ?1 AND version = ?10"
_WITH_TOKEN = " AND fencing_token = ?11"
_NOT_LEASED = " AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?11"
_EVICT = " OR lease_owner = ?15"
_RETURNING = " RETURNING fencing_token"


@cache
def _save_sql(insert: bool, token: bool, lease: bool | None, evict: bool) -> str:
    """The statement of a save (it takes all 16 parameters). ``lease``: ``None``
    leaves the lease columns alone, ``True`` holds the lease, ``False`` frees it."""
    if insert:
        sql = _INSERT_HOLDING if lease else _INSERT
    else:
        sql = _UPDATE + {None: "", True: _HOLD, False: _FREE}[lease] + _WHERE
        sql += _WITH_TOKEN if token else _NOT_LEASED + (_EVICT if evict else "") + ")"
        sql += _RETURNING
    return sql


_JOURNAL = "INSERT INTO journal (machine_id, version, kind, at, data) VALUES (?, ?, ?, ?, ?)"
_DELIVER = (
    "UPDATE inbox SET delivered_at = ? WHERE seq = ? AND machine_id = ? AND delivered_at IS NULL"
)


class SaveOp:
    """One save: the compare-and-set, the lease check, the journal and the consumed
    inbox events, in the operation's own SAVEPOINT (all or nothing)."""

    __slots__ = ("consumed", "error", "expected", "holds", "journal", "lease", "token", "values")

    def __init__(
        self,
        values: tuple[Any, ...],
        expected: int | None,
        journal: list[tuple[Any, ...]],
        token: int | None = None,
        consumed: Sequence[int] = (),
        error: str | bytes | None = None,
    ) -> None:
        self.values = values  # id, workflow, definition_id, status, state, version, blob, at, busy
        self.expected = expected
        self.journal = journal
        self.token = token
        self.consumed = tuple(consumed)
        self.lease: Lease | None = None
        self.holds = False  # with a lease: hold it (else free it)
        self.error = error  # the last error's column (text, or sealed bytes)

    def __call__(self, conn: sqlite3.Connection) -> int:
        mid, expected, token, now = self.values[0], self.expected, self.token, now_us()
        lease = self.lease
        mode = None if lease is None else self.holds
        evict = lease.evict if lease is not None else None
        sql = _save_sql(expected is None, token is not None, mode, evict is not None)
        owner = until = None
        if lease is not None:
            owner, until = lease.owner, now + int(lease.ms * 1000)
        params = (
            *self.values,
            expected,
            now if token is None else token,
            owner,
            until,
            int(token is None),
            evict,
            self.error,
        )
        rows = conn.execute(sql, params).fetchall()  # fetched to the end: done
        if not rows:
            raise self._refusal(conn, now)
        if self.journal:
            conn.executemany(_JOURNAL, self.journal)
        if self.consumed:
            at = self.values[7]
            conn.executemany(_DELIVER, [(at, seq, mid) for seq in self.consumed])
        return int(rows[0][0])

    def _refusal(self, conn: sqlite3.Connection, now: int) -> StateMachineError:
        """Why nothing was written. The lease is checked first, so a fenced-out writer
        learns that it lost the machine (not that someone else wrote meanwhile)."""
        mid, token = self.values[0], self.token
        sql = "SELECT version, fencing_token, lease_owner, lease_expires_at FROM machines"
        row = conn.execute(sql + " WHERE id = ?", (mid,)).fetchone()
        if row is None:
            return conflict(mid, self.expected, None)
        found, current, owner, until = row
        if token is not None and token != current:
            return lease_lost(mid, token)
        lease = self.lease
        live = owner is not None and until is not None and until > now
        if token is None and live and (lease is None or owner != lease.evict):
            if lease is None:
                return lease_lost(mid, None)
            return LeaseHeld(mid, owner, datetime.fromtimestamp(until / 1e6, UTC))
        return conflict(mid, self.expected, found)


def journal_json(data: Any) -> str:
    # The journal is for people and tools: a value JSON cannot hold is kept as its str()
    # rather than failing the durable write it explains.
    return json.dumps(dict(data), separators=(",", ":"), allow_nan=False, default=str)
