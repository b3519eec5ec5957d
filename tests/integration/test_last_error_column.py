"""The ``last_error`` column behind ``list()``: sealed with ``EncryptedCodec`` (never in
clear), readable with the keys, a placeholder without them; and the migration that adds
it fills it in for the rows a store already holds."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))

import postgres_kind

import deploysm
from deploysm.stores import EncryptedCodec, SQLiteStore, Store
from deploysm.stores._postgres import PostgresStore
from deploysm.stores._sealed import ENCRYPTED_ERROR
from deploysm.testing import VirtualClock

pytest.importorskip("cryptography")

SECRET = "err-Xc8Vb27nMq1Z"
CODEC = EncryptedCodec({"k1": EncryptedCodec.generate_key()}, "k1")


def _config(store: Store) -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    def boom(ctx: Any, state: Any) -> None:
        raise RuntimeError(f"upstream said {SECRET}")

    return deploysm.StateMachineConfig(
        id="flow",
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[deploysm.Transition("a", "b", "GO")],
        effects={"b": deploysm.effect().execute(boom).set_idempotent(True).build()},
        store=store,
        clock=VirtualClock(),
    )


async def _fail_one(store: Store) -> None:
    sm = deploysm.create_state_machine(_config(store), {}, "m")
    assert not (await sm.dispatch("GO")).success


async def test_sqlite_seals_the_last_error(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with SQLiteStore(path, codec=CODEC) as store:
        await _fail_one(store)
        (info,) = await store.list()
        assert info.last_error is not None and SECRET in info.last_error
    with sqlite3.connect(path) as raw:
        (value,) = raw.execute("SELECT last_error FROM machines").fetchone()
    raw.close()
    assert isinstance(value, bytes) and SECRET.encode() not in value
    async with SQLiteStore(path) as keyless:
        (info,) = await keyless.list()
        assert (info.status, info.last_error) == ("active", ENCRYPTED_ERROR)


async def test_postgres_seals_the_last_error() -> None:
    store = postgres_kind.make(codec=CODEC)
    async with store:
        await _fail_one(store)
        (info,) = await store.list()
        assert info.last_error is not None and SECRET in info.last_error
        async with await psycopg.AsyncConnection.connect(store.dsn) as conn:
            query = sql.SQL("SELECT last_error, sealed_error FROM {}.machines")
            cur = await conn.execute(query.format(sql.Identifier(store.schema)))
            text, sealed = await cur.fetchone() or (None, None)
        assert text is None and SECRET.encode() not in bytes(sealed)
        keyless = PostgresStore(store.dsn, schema=store.schema)
        async with keyless:
            (info,) = await keyless.list()
            assert info.last_error == ENCRYPTED_ERROR


async def test_sqlite_migration_fills_in_existing_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await _fail_one(store)
        (info,) = await store.list()
        listed = info.last_error
    assert listed is not None and listed.startswith("EFFECT_ERROR: ") and SECRET in listed
    with sqlite3.connect(path) as raw:  # back to the schema before the column
        raw.execute("ALTER TABLE machines DROP COLUMN last_error")
        raw.execute("DELETE FROM deploysm_schema WHERE name = 'last_error'")
    raw.close()
    async with SQLiteStore(path) as store:
        (info,) = await store.list()
        assert info.last_error == listed


async def test_postgres_migration_fills_in_existing_rows() -> None:
    store = postgres_kind.make()
    async with store:
        await _fail_one(store)
        (info,) = await store.list()
        listed = info.last_error
        assert listed is not None and SECRET in listed
        async with await psycopg.AsyncConnection.connect(store.dsn, autocommit=True) as conn:
            schema = sql.Identifier(store.schema)
            await conn.execute(
                sql.SQL(
                    "ALTER TABLE {}.machines DROP COLUMN last_error, DROP COLUMN sealed_error"
                ).format(schema)
            )
            await conn.execute(
                sql.SQL("DELETE FROM {}.deploysm_schema WHERE name = 'last_error'").format(schema)
            )
            await conn.execute(  # a row that is not JSON is left alone
                sql.SQL(
                    "INSERT INTO {}.machines (id, definition_id, status, state, version, snapshot)"
                    " VALUES ('junk', 'flow', 'active', 'a', 1, '{{not json'::bytea)"
                ).format(schema)
            )
        again = PostgresStore(store.dsn, schema=store.schema)
        async with again:
            infos = {i.machine_id: i.last_error for i in await again.list()}
        assert infos == {"junk": None, "m": listed}
