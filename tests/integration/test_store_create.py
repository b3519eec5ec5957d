"""``create=False``: opening a store that is not there creates nothing (``NO_STORE``).

The command line opens every store this way except in ``deploysm migrate``, so that a
typo in ``--db`` leaves no empty file or folder behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploysm import ErrorCode, StateMachineError
from deploysm.stores import SQLiteStore, open_store
from deploysm.stores._postgres_sql import migrations as postgres_migrations
from deploysm.stores._sqlite_writer import migrations as sqlite_migrations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
import postgres_kind


async def test_sqlite_create_false_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "x.db"
    for store in (SQLiteStore(path, create=False), open_store(f"sqlite:///{path}", create=False)):
        with pytest.raises(StateMachineError) as info:
            await store.open()
        assert info.value.code == ErrorCode.NO_STORE
        assert str(path) in info.value.message
    assert not (tmp_path / "no").exists()


async def test_sqlite_create_false_refuses_a_file_without_a_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StateMachineError) as info:
        await SQLiteStore(path, create=False).open()
    assert info.value.code == ErrorCode.NO_STORE
    assert path.read_bytes() == b""


async def test_sqlite_create_false_opens_a_migrated_store(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    created = SQLiteStore(path)
    await created.open()
    assert created.migrated == list(range(1, len(sqlite_migrations()) + 1))
    await created.start("wf", "m1", {})
    await created.close()
    async with SQLiteStore(path, create=False) as store:
        assert store.migrated == []
        assert [i.machine_id for i in await store.list()] == ["m1"]


async def test_postgres_create_false_refuses_a_schema_without_tables() -> None:
    dsn = postgres_kind.pg_dsn()
    schema = postgres_kind.fresh_schema()
    from deploysm.stores._postgres import PostgresStore

    try:
        with pytest.raises(StateMachineError) as info:
            await PostgresStore(dsn, schema=schema, create=False).open()
        assert info.value.code == ErrorCode.NO_STORE
        store = PostgresStore(dsn, schema=schema)
        await store.open()
        assert store.migrated == list(range(1, len(postgres_migrations()) + 1))
        await store.close()
        async with PostgresStore(dsn, schema=schema, create=False) as again:
            assert again.migrated == [] and await again.list() == []
    finally:
        await postgres_kind.drop_schema(dsn, schema)


async def test_sqlite_create_false_refuses_a_database_of_something_else(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(StateMachineError) as info:
        await SQLiteStore(path, create=False).open()
    assert info.value.code == ErrorCode.NO_STORE
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"notes"}
