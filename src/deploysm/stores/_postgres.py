"""``PostgresStore``: many workers on many hosts sharing one PostgreSQL database.

psycopg 3 with a ``psycopg_pool.AsyncConnectionPool`` (see docs/postgres.md for the
measurements behind the choice). Every write is one transaction: a compare-and-set
save carries its journal records and marks its consumed inbox events delivered, or
writes nothing. Workers lease machines with ``FOR UPDATE SKIP LOCKED`` claims; each
claim bumps a fencing token that every later save must carry. Leases and timers use
the database clock. ``send``/``start``/``request_cancel``/``release`` notify
(``pg_notify``) in their own transaction, and ``wait_for_work`` listens on a
dedicated connection: that ``RuntimeStore`` half is in ``_postgres_runtime``. The SQL
lives in ``sql/postgres`` (see ``_postgres_sql``).

A save is one statement (data-modifying CTEs: the compare-and-set and lease check,
the journal rows, the inbox deliveries), so one round trip that commits on its own:
a durable transition costs two commits (intent, outcome) and little more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from ._base import (
    AsyncOpenClose,
    Codec,
    JournalEntry,
    JournalRecord,
    JSONCodec,
    MachineInfo,
    encode_snapshot,
    error_text,
)
from ._postgres_runtime import PostgresRuntime
from ._postgres_sql import (
    STORE_UNAVAILABLE,
    Listener,
    check_dsn,
    db_error,
    journal_rows,
    migrate,
    queries,
    redact,
    refusal,
    refuses,
    save_query,
    utc,
)
from ._prune import PruneCounts, check_age
from ._rows import journal_entry
from ._runtime import Lease, holds_lease
from ._sealed import SealingStore, read_error, seal, seals, unseal
from ._sqlite import _decode

__all__ = ["STORE_UNAVAILABLE", "PostgresStore"]

Conn = psycopg.AsyncConnection[Any]


class PostgresStore(PostgresRuntime, SealingStore, AsyncOpenClose):
    """A ``Store`` and ``RuntimeStore`` in PostgreSQL, in ``schema`` (created if needed).

    ``async with PostgresStore(dsn) as store:`` connects and migrates; a store used
    before ``open()`` opens itself. ``min_size``/``max_size`` bound the pool; the
    ``LISTEN`` connection of ``wait_for_work`` is one more, opened on first use.
    ``connect_timeout`` (seconds) bounds connecting and waiting for a pooled
    connection; past it, or when the server is unreachable, calls fail with
    ``STORE_UNAVAILABLE``. ``create=False`` creates nothing: a schema without
    deploysm's tables is ``NO_STORE`` (an older schema is still upgraded).
    """

    def __init__(
        self,
        dsn: str,
        *,
        codec: Codec | None = None,
        min_size: int = 1,
        max_size: int = 8,
        schema: str = "public",
        connect_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        check_dsn(dsn)
        if not isinstance(schema, str) or not schema or len(schema.encode()) > 63:
            raise ValueError("schema must be a non-empty name of at most 63 bytes")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        self.dsn = dsn
        self.schema = schema
        self.codec: Codec = codec if codec is not None else JSONCodec()
        self._seals = seals(self.codec)
        self._marked = False  # deploysm_meta says the schema holds encrypted rows
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = float(connect_timeout)
        self.create = bool(create)
        self.migrated: list[int] = []  # the schema versions the last open() applied
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: Listener | None = None
        self._lock = asyncio.Lock()
        self._q = queries()

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.dsn)!r}, schema={self.schema!r})"

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect, apply migrations, fill the pool. Idempotent."""
        async with self._lock:
            if self._pool is not None:
                return
            self.migrated = await self.migrate()
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                kwargs={"autocommit": True, "fallback_application_name": "deploysm"},
                configure=self._configure,
                timeout=self.connect_timeout,
                name=f"deploysm-{self.schema}",
                open=False,
            )
            try:
                await pool.open(wait=True, timeout=self.connect_timeout)
            except psycopg.Error as e:
                await pool.close()
                raise db_error(e, self.dsn, "opening the connection pool") from e
            self._pool = pool
            self._marked = await self._fetchone("marked", None, "opening") is not None

    async def _write_mark(self) -> None:
        async with self._conn("marking the schema as encrypted") as conn:
            await conn.execute(self._q["mark"])

    async def close(self) -> None:
        """Stop listening and close every connection. Idempotent; a later call reopens."""
        async with self._lock:
            listener, self._listener = self._listener, None
            pool, self._pool = self._pool, None
            if listener is not None:
                await listener.stop()
            if pool is not None:
                await pool.close()

    async def migrate(self) -> list[int]:
        """Apply the migrations this code knows and the schema lacks; returns the versions
        applied. Safe to run from several processes at once; ``SCHEMA_TOO_NEW`` if the
        schema is newer than this code."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(2, round(self.connect_timeout)),
                fallback_application_name="deploysm",
            )
        except psycopg.Error as e:
            raise db_error(e, self.dsn, "connecting") from e
        try:
            return await migrate(conn, self.schema, self.create)
        except psycopg.Error as e:
            raise db_error(e, self.dsn, "migrating the schema") from e
        finally:
            await conn.close()

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false)",
            (sql.Identifier(self.schema).as_string(conn),),
        )

    @asynccontextmanager
    async def _conn(self, doing: str) -> AsyncIterator[Conn]:
        """A pooled connection (autocommit); driver errors become store errors."""
        pool = self._pool
        if pool is None:
            await self.open()
            pool = self._pool
            assert pool is not None
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            raise db_error(e, self.dsn, doing) from e
        except UnicodeEncodeError as e:  # a lone surrogate: no database text can hold it
            msg = f"text that is not valid UTF-8 cannot be stored or looked up ({doing}): {e}"
            raise StateMachineError(msg, ErrorCode.INVALID_TEXT) from e

    async def _fetchone(self, name: str, params: Any, doing: str) -> tuple[Any, ...] | None:
        async with self._conn(doing) as conn:
            cur = await conn.execute(self._q[name], params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

    async def _fetchall(self, name: str, params: Any, doing: str) -> list[tuple[Any, ...]]:
        async with self._conn(doing) as conn:
            cur = await conn.execute(self._q[name], params)
            rows: list[tuple[Any, ...]] = await cur.fetchall()
            return rows

    # ------------------------------------------------------------------- Store

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
        token: int | None = None,
        consumed: Sequence[int] = (),
        lease: Lease | None = None,
    ) -> int | None:
        """Compare-and-set ``snapshot`` with its journal records and the delivery of the
        ``consumed`` inbox events, in one transaction; ``CONFLICT`` (stale version) or
        ``LEASE_LOST`` (stale ``token``, or another worker's live lease when no token is
        given: ``LEASE_HELD`` with a ``lease``; checked before the version, so a
        fenced-out writer learns why) write nothing. With a lease, returns the fencing token."""
        mid = snapshot.machine_id
        sealed = self._seals and bool(journal)
        params = {
            **self._error_params(mid, error_text(snapshot.last_error)),
            "id": mid,
            "workflow": workflow,
            "definition_id": snapshot.definition_id,
            "status": snapshot.status,
            "state": snapshot.current_state.name,
            "version": snapshot.version,
            "snapshot": encode_snapshot(self.codec, snapshot),
            "busy": snapshot.in_flight is not None,
            "expected": expected_version,
            "token": token,
            "journal": journal_rows(journal) if journal and not sealed else None,
            "seqs": list(consumed),
            "hold": None if lease is None else holds_lease(snapshot),
            "owner": None if lease is None else lease.owner,
            "lease_ms": None if lease is None else lease.ms,
            "evict": None if lease is None else lease.evict,
        }
        if sealed:
            params["kinds"] = [r.kind for r in journal]
            params["ats"] = [utc(r.at) for r in journal]
            params["sealed"] = [seal(self.codec, mid, r.data) for r in journal]
        if self._seals is not self._marked or self._pool is None:
            await self._writable()
        query = save_query(expected_version is None, bool(journal), bool(consumed), sealed)
        async with self._conn(f"saving {mid!r}") as conn:
            # one statement, so one round trip and its own transaction (autocommit)
            cur = await conn.execute(query, params, prepare=True)
            row = await cur.fetchone()
            if row is not None and row[0]:
                return int(row[1]) if lease is not None else None
            found = None if row is None else row[1:]
            evict = None if lease is None else lease.evict
            if not refuses(expected_version, token, found, evict):
                cur = await conn.execute(self._q["save_found"], {"id": mid})
                found = await cur.fetchone()
        raise refusal(mid, expected_version, token, found, lease)

    async def load(self, machine_id: str) -> SerializableState | None:
        row = await self._fetchone("load", {"id": machine_id}, f"loading {machine_id!r}")
        if row is None or row[0] is None:
            return None
        return _decode(self.codec, machine_id, row[0])

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        rows = await self._fetchall(
            "journal", {"id": machine_id, "after": after}, f"reading the journal of {machine_id!r}"
        )
        codec = self.codec
        return [
            journal_entry(
                machine_id,
                seq,
                version,
                kind,
                at,
                data
                if sealed is None
                else unseal(codec, machine_id, sealed, f"journal entry {seq}"),
            )
            for seq, version, kind, at, data, sealed in rows
        ]

    async def prune(self, older_than: timedelta) -> PruneCounts:
        """Remove old journal entries of finished machines and old delivered events, in
        one statement, by the database clock (see ``_prune``)."""
        params = {"older": check_age(older_than)}
        row = await self._fetchone("prune", params, "pruning")
        assert row is not None
        return PruneCounts(int(row[0]), int(row[1]))

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        if status is None:
            rows = await self._fetchall("list_all", None, "listing machines")
        else:
            rows = await self._fetchall("list_status", {"status": status}, "listing machines")
        codec = self.codec
        return [
            MachineInfo(
                mid,
                wf,
                did,
                st,
                state,
                version,
                at.astimezone(UTC),
                read_error(codec, mid, sealed if sealed is not None else error),
            )
            for mid, wf, did, st, state, version, at, error, sealed in rows
        ]
