"""How a worker rides out a failing store: capped exponential backoff with jitter, and
which store errors retrying cannot fix.

A full disk ("disk I/O error", "database or disk is full"), a lock held too long, a
server restarting or a killed connection pass: the worker logs, waits and tries again,
and nothing is lost meanwhile (an event is marked delivered only by the durable write
of what it did). A database this process may not write (read-only file or mount,
permission denied), a corrupt file, or a schema newer than this code stay as they are
however long the worker waits: it stops with a message saying what to fix.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable

from ..core._errors import ErrorCode, StateMachineError

__all__ = ["BASE_S", "CAP_S", "Backoff", "unfixable"]

BASE_S = 0.1  # the first delay
CAP_S = 30.0  # no delay is longer

# SQLite primary result codes that no retry fixes: PERM, READONLY, CORRUPT, CANTOPEN,
# AUTH, NOTADB.
_SQLITE_UNFIXABLE = {3: "permission", 8: "readonly", 11: "corrupt", 14: "cantopen"}
_SQLITE_UNFIXABLE |= {23: "permission", 26: "corrupt"}
# PostgreSQL SQLSTATE classes (and codes) that no retry fixes: invalid authorization,
# invalid catalog name, access rule / undefined object, read-only transaction.
_PG_UNFIXABLE = ("28", "3D", "42", "25006")

_HINTS = {
    "readonly": "the database is read-only for this process: check the file's, its "
    "directory's and the mount's write permissions, then restart the worker",
    "permission": "permission denied: check the file's and its directory's owner and "
    "mode (or the database role's grants), then restart the worker",
    "cantopen": "the database file cannot be opened: check that its directory exists "
    "and is writable, then restart the worker",
    "corrupt": "the database file is corrupt or not a deploysm database: restore it from a backup",
    "schema": "the schema is newer than this deploysm: upgrade deploysm",
}
_UNFIXABLE_CODES = {
    ErrorCode.SCHEMA_TOO_NEW: "schema",
    ErrorCode.INVALID_STORE_URL: "cantopen",
}


class Backoff:
    """Delays that double from ``base_s`` up to ``cap_s``, each drawn at random from
    the upper half of its step (jitter: workers that failed together do not retry in
    step); ``reset`` after a success starts again from ``base_s``."""

    __slots__ = ("_random", "base_s", "cap_s", "failures")

    def __init__(
        self,
        base_s: float = BASE_S,
        cap_s: float = CAP_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._random = rand
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try (counts one more failure)."""
        step = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return step / 2 + self._random() * step / 2

    def reset(self) -> None:
        self.failures = 0


def unfixable(error: BaseException) -> str | None:
    """What to fix when retrying cannot fix ``error``; ``None`` when a retry may work
    (busy, unavailable, an I/O error, a full disk)."""
    if not isinstance(error, StateMachineError):
        return None
    kind = _UNFIXABLE_CODES.get(error.code)
    if kind is not None:
        return _HINTS[kind]
    if error.code != ErrorCode.PERSISTENCE_ERROR:
        return None
    cause = error.__cause__
    if isinstance(cause, sqlite3.Error):
        kind = _SQLITE_UNFIXABLE.get(getattr(cause, "sqlite_errorcode", 0) & 0xFF)
        return None if kind is None else _HINTS[kind]
    state = getattr(cause, "sqlstate", None)  # a psycopg error
    if isinstance(state, str) and state.startswith(_PG_UNFIXABLE):
        return (
            f"PostgreSQL refuses it (SQLSTATE {state}): check the role's grants, the "
            "database and its schema, then restart the worker"
        )
    return None
