"""PostgreSQL for the contract suites: a fresh schema per test, dropped afterwards.

The server comes from ``DEPLOYSM_TEST_PG`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``).
Without it the PostgreSQL cases are skipped, with the reason, unless ``CI`` is set:
under CI a missing URL (or an unreachable server) is a failure, never a silent skip.

``make`` and ``tamper`` have the shapes of ``conftest.StoreKind``; the entry is
``StoreKind("postgres", postgres_kind.make, postgres_kind.tamper)``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deploysm.stores._postgres import PostgresStore

ENV = "DEPLOYSM_TEST_PG"


def pg_dsn() -> str:
    """The test server's DSN; skips the test when none is configured outside CI, fails
    it under CI."""
    dsn = os.environ.get(ENV, "").strip()
    if dsn:
        return dsn
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {ENV} is not: the PostgreSQL store tests need a server")
    pytest.skip(f"PostgreSQL tests need {ENV}=postgresql://user@host:port/db (not set)")


def fresh_schema() -> str:
    return f"deploysm_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"


async def drop_schema(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


class DisposablePostgresStore(PostgresStore):
    """A store in a schema of its own that ``close()`` drops."""

    async def close(self) -> None:
        await super().close()
        await drop_schema(self.dsn, self.schema)


def make(tmp_path: Path | None = None, **kwargs: Any) -> PostgresStore:
    """A store in a fresh, uniquely named schema (created by ``open()``)."""
    return DisposablePostgresStore(pg_dsn(), schema=fresh_schema(), **kwargs)


async def tamper(store: PostgresStore, machine_id: str, blob: bytes) -> None:
    """Overwrite a stored snapshot behind the store's back."""
    async with await psycopg.AsyncConnection.connect(store.dsn, autocommit=True) as conn:
        query = sql.SQL("UPDATE {}.machines SET snapshot = %s WHERE id = %s")
        await conn.execute(query.format(sql.Identifier(store.schema)), (blob, machine_id))
