"""Rows read back from a database, checked column by column.

A database file can be edited by hand (or by a bug elsewhere): a journal entry's data
that is not a JSON object, a time that is not ISO-8601, a NULL, a number where text
belongs. Whatever is wrong with a row becomes ``CORRUPT_ROW``, naming the row and the
column, rather than an error of the standard library somewhere later.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ._base import JournalEntry, MachineInfo

__all__ = ["corrupt_row", "journal_entry", "machine_info"]


def corrupt_row(row: str, column: str, why: str) -> StateMachineError:
    return StateMachineError(f"{row} is corrupt: {column} {why}", ErrorCode.CORRUPT_ROW)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _text(row: str, column: str, value: Any, *, null: bool = False) -> Any:
    if type(value) is str or (null and value is None):
        return value
    raise corrupt_row(row, column, f"must be text, found {_shown(value)}")


def _int(row: str, column: str, value: Any) -> int:
    if type(value) is int and value >= 0:
        return value
    raise corrupt_row(row, column, f"must be an integer >= 0, found {_shown(value)}")


def _time(row: str, column: str, value: Any) -> datetime:
    """An aware datetime (PostgreSQL) or ISO-8601 text (SQLite; naive text is UTC)."""
    if type(value) is str:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise corrupt_row(row, column, f"is not an ISO-8601 time: {_shown(value)}") from None
    if not isinstance(value, datetime):
        raise corrupt_row(row, column, f"must be an ISO-8601 time, found {_shown(value)}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _object(row: str, column: str, value: Any) -> dict[str, Any]:
    """A JSON object, as JSON text or bytes (SQLite) or already decoded (PostgreSQL)."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise corrupt_row(row, column, f"is not valid JSON ({e})") from None
    if type(value) is not dict:
        raise corrupt_row(row, column, f"must be a JSON object, found {_shown(value)}")
    return value


def journal_entry(
    machine_id: str, seq: Any, version: Any, kind: Any, at: Any, data: Any
) -> JournalEntry:
    if type(seq) is int and type(version) is int and type(kind) is str and type(at) is str:
        try:  # the usual row, checked at the cost of the type tests above
            when, value = datetime.fromisoformat(at), json.loads(data)
        except (ValueError, TypeError, RecursionError):
            pass
        else:
            if type(value) is dict and when.tzinfo is UTC and seq >= 0 and version >= 0:
                return JournalEntry(seq, machine_id, version, kind, when, value)
    row = f"journal entry {_shown(seq)} of machine {machine_id!r}"
    return JournalEntry(
        _int(row, "seq", seq),
        machine_id,
        _int(row, "version", version),
        _text(row, "kind", kind),
        _time(row, "at", at),
        _object(row, "data", data),
    )


def machine_info(
    mid: Any,
    workflow: Any,
    definition_id: Any,
    status: Any,
    state: Any,
    version: Any,
    at: Any,
    error: str | None = None,
) -> MachineInfo:
    """A ``machines`` row as ``MachineInfo``; ``error`` is the last error, already read
    (``_sealed.read_error``)."""
    if (
        type(mid) is str
        and (workflow is None or type(workflow) is str)
        and type(definition_id) is str
        and type(status) is str
        and type(state) is str
        and type(version) is int
        and type(at) is str
        and version >= 0
    ):
        try:  # the usual row, checked at the cost of the type tests above
            when = datetime.fromisoformat(at)
        except ValueError:
            pass
        else:
            if when.tzinfo is UTC:
                return MachineInfo(
                    mid, workflow, definition_id, status, state, version, when, error
                )
    row = f"the machines row of {_shown(mid)}"
    return MachineInfo(
        _text(row, "id", mid),
        _text(row, "workflow", workflow, null=True),
        _text(row, "definition_id", definition_id),
        _text(row, "status", status),
        _text(row, "state", state),
        _int(row, "version", version),
        _time(row, "updated_at", at),
        error,
    )
