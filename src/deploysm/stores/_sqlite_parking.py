"""Parking in ``SQLiteStore`` (see ``_parking``): the writer-thread operations that
park a machine a claim cannot read (``park_unreadable``) or its worker cannot run
(``park_held``), and that put it back (``unpark_row``). Each one sets the machine's
status and last error and notes why in its journal, in the writer's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ..core._errors import StateMachineError
from ..durable._snapshot import SerializableState
from . import _parking as parking
from ._base import error_text
from ._parking import PARKED, UNPARKED, UNREADABLE, check_snapshot, check_unpark, log_parked, reason
from ._runtime import unknown_machine
from ._sqlite_writer import utc_text

__all__ = ["ErrorColumn", "park_held", "park_unreadable", "unpark_row"]

_PARK = "UPDATE machines SET status = ?, last_error = ? WHERE id = ? RETURNING version"
_PARK_HELD = (
    "UPDATE machines SET status = ?, last_error = ?, lease_owner = NULL, lease_expires_at = NULL"
    " WHERE id = ? AND fencing_token = ? RETURNING version"
)
# The last error column of a machine: its text, or the codec's bytes (stores/_sealed).
ErrorColumn = Callable[[str, str | None], str | bytes | None]
_NOTE = "INSERT INTO journal (machine_id, version, kind, at, data) VALUES (?, ?, ?, ?, ?)"


def _note(conn: sqlite3.Connection, mid: str, version: int, kind: str, data: Any) -> None:
    conn.execute(
        _NOTE,
        (mid, version, kind, utc_text(), json.dumps(data, separators=(",", ":"), allow_nan=False)),
    )


def park_unreadable(
    conn: sqlite3.Connection, mid: str, error: StateMachineError, column: str | bytes | None
) -> None:
    ((version,),) = conn.execute(_PARK, (PARKED, column, mid)).fetchall()
    _note(conn, mid, version, UNREADABLE, reason(error))
    log_parked(mid, error)


def park_held(
    conn: sqlite3.Connection,
    mid: str,
    token: int,
    error: StateMachineError,
    column: str | bytes | None,
) -> bool:
    row = conn.execute(_PARK_HELD, (PARKED, column, mid, token)).fetchone()
    if row is None:
        return False
    _note(conn, mid, row[0], parking.UNRUNNABLE, reason(error))
    return True


def unpark_row(
    conn: sqlite3.Connection,
    decode: Callable[[str, Any], SerializableState],
    context_of: Callable[[str, Any], Any],
    error_of: ErrorColumn,
    mid: str,
) -> SerializableState | None:
    sql = "SELECT status, snapshot, start_context FROM machines WHERE id = ?"
    row = conn.execute(sql, (mid,)).fetchone()
    if row is None:
        raise unknown_machine(mid)
    status, blob, context = row
    check_unpark(mid, status, blob is not None or context is not None)
    snap = None
    if blob is None:  # never run: its start context was what could not be read
        context_of(mid, context)
        status, error = "active", None
    else:
        snap = decode(mid, blob)
        check_snapshot(snap)
        status, error = snap.status, error_of(mid, error_text(snap.last_error))
    ((version,),) = conn.execute(_PARK, (status, error, mid)).fetchall()
    _note(conn, mid, version, UNPARKED, {"status": status})
    return snap
