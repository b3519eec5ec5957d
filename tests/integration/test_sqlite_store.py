"""SQLiteStore beyond the contract: schema, pragmas, processes, group commit, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import deploysm
from deploysm import ErrorCode, SerializableState, StateMachineConfig, StateMachineError
from deploysm.stores import JournalRecord
from deploysm.stores._sqlite import SQLiteStore
from deploysm.stores._sqlite_writer import migrations, split_sql
from deploysm.testing import VirtualClock

SRC = str(Path(deploysm.__file__).resolve().parent.parent)


def _config() -> StateMachineConfig[Any, Any, Any]:
    return StateMachineConfig(
        id="flow",
        initial_state="idle",
        states=["idle", "running", "done"],
        events=["GO", "FINISH"],
        transitions=[
            deploysm.Transition("idle", "running", "GO"),
            deploysm.Transition("running", "done", "FINISH"),
        ],
        clock=VirtualClock(),
        random=random.Random(3),
    )


async def snapshot(machine_id: str, version: int = 1, **changes: Any) -> SerializableState:
    sm = deploysm.create_state_machine(_config(), {"n": 1}, machine_id=machine_id)
    snap = await sm.serialize()
    return dataclasses.replace(snap, version=version, **changes)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5, isolation_level=None)


def run_child(code: str, path: Path, *args: str, stdin: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )


CHILD_WRITER = """
    import asyncio, json, sys
    from deploysm import SerializableState
    from deploysm.stores._sqlite import SQLiteStore

    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    template = json.loads(sys.stdin.read())

    async def main():
        async with SQLiteStore(path) as store:
            async def one(i):
                data = dict(template, machine_id=f"{prefix}{i:02d}")
                await store.save(SerializableState.from_dict(data), expected_version=None)
            for i in range(0, count, 3):  # many small commits: a long window to collide in
                await asyncio.gather(*(one(j) for j in range(i, min(i + 3, count))))
            print("ok", store.commits)

    asyncio.run(main())
"""

CHILD_STALE = """
    import asyncio, json, sys
    from deploysm import SerializableState, StateMachineError
    from deploysm.stores._sqlite import SQLiteStore

    path = sys.argv[1]
    snap = SerializableState.from_dict(json.loads(sys.stdin.read()))

    async def main():
        async with SQLiteStore(path) as store:
            try:
                await store.save(snap, expected_version=1)
            except StateMachineError as e:
                print(e.code)
            else:
                print("saved")

    asyncio.run(main())
"""


# ------------------------------------------------------------------------- schema


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "s.db"
    for i in range(3):
        async with SQLiteStore(path) as store:
            await store.save(await snapshot(f"m{i}"), expected_version=None)
            assert len(await store.list()) == i + 1
    with raw(path) as conn:
        rows = conn.execute("SELECT version, name, applied_at FROM deploysm_schema").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in migrations()]
    assert rows[0][:2] == (1, "machines_and_journal")
    assert {"machines", "journal", "deploysm_schema"} <= tables


async def test_concurrent_first_opens_of_one_new_file(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    stores = [SQLiteStore(path) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    snaps = [await snapshot(f"m{i}") for i in range(4)]
    await asyncio.gather(
        *(s.save(snap, expected_version=None) for s, snap in zip(stores, snaps, strict=True))
    )
    assert len(await stores[0].list()) == 4
    for s in stores:
        await s.close()
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM deploysm_schema").fetchone() == (
            len(migrations()),
        )
    conn.close()


async def test_schema_too_new_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with SQLiteStore(path):
        pass
    with raw(path) as conn:
        conn.execute("INSERT INTO deploysm_schema VALUES (999, 'from_the_future', 'now')")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StateMachineError) as info:
        await store.open()
    assert info.value.code == "SCHEMA_TOO_NEW"
    assert "999" in info.value.message
    await store.close()  # nothing to close, no error


async def test_not_a_database_is_a_persistence_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(StateMachineError) as info:
        await SQLiteStore(path).open()
    assert info.value.code == ErrorCode.PERSISTENCE_ERROR
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_split_sql_keeps_statements_whole() -> None:
    script = "-- head; comment\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n-- tail\n"
    script += "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;\n"
    assert split_sql(script) == (
        "-- head; comment\nCREATE TABLE a (x TEXT DEFAULT ';');",
        "-- tail\nCREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;",
    )


def test_bad_arguments() -> None:
    for bad in (":memory:", "", "file::memory:?cache=shared"):
        with pytest.raises(ValueError, match=r"memory|path"):
            SQLiteStore(bad)
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("x.db", synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SQLiteStore("x.db", busy_timeout_ms=-1)


# ----------------------------------------------------------------- settings, data


async def test_wal_and_synchronous_full_are_set(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "p.db") as store:
        sync = await store.run_write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        mode = await store.run_write(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        fks = await store.run_read(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0])
        busy = await store.run_read(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
    assert (sync, mode, fks, busy) == (2, "wal", 1, 5000)  # 2 = FULL
    async with SQLiteStore(tmp_path / "p.db", synchronous="normal") as store:
        assert await store.run_write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    with raw(tmp_path / "p.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # stored in the file
    conn.close()


async def test_reader_is_read_only(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "r.db") as store:
        with pytest.raises(StateMachineError) as info:
            await store.run_read(lambda c: c.execute("DELETE FROM machines"))
    assert info.value.code == ErrorCode.PERSISTENCE_ERROR


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    snap = await snapshot("m", version=3)
    at = deploysm.now()
    async with SQLiteStore(path) as store:
        await store.save(snap, expected_version=None, journal=[JournalRecord("k", at, {"a": 1})])
    async with SQLiteStore(path) as again:
        loaded = await again.load("m")
        assert loaded is not None and loaded.to_dict() == snap.to_dict()
        (entry,) = await again.journal("m")
        assert (entry.kind, entry.at, dict(entry.data), entry.version) == ("k", at, {"a": 1}, 3)


def test_usable_from_several_event_loops(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "loops.db")

    async def first() -> None:
        await store.open()
        await store.save(await snapshot("m", 1), expected_version=None)

    async def second() -> None:  # a new loop, store still open
        await store.save(await snapshot("m", 2), expected_version=1)
        await store.close()

    async def third() -> None:  # reopened on yet another loop
        await store.open()
        loaded = await store.load("m")
        assert loaded is not None and loaded.version == 2
        await store.close()
        await store.close()  # idempotent

    for step in (first, second, third):
        asyncio.run(step())


async def test_opens_itself_when_used_unopened(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "lazy.db")
    snaps = [await snapshot(f"m{i}") for i in range(3)]
    await asyncio.gather(*(store.save(s, expected_version=None) for s in snaps))
    assert len(await store.list()) == 3
    await store.close()
    assert await store.load("m1") is not None  # reopens after close too
    await store.close()


async def test_swapped_row_is_invalid_snapshot(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "swap.db") as store:
        await store.save(await snapshot("a"), expected_version=None)
        await store.save(await snapshot("b"), expected_version=None)
        with raw(store.path) as conn:
            conn.execute(
                "UPDATE machines SET snapshot = (SELECT snapshot FROM machines "
                "WHERE id = 'a') WHERE id = 'b'"
            )
        conn.close()
        with pytest.raises(StateMachineError) as info:
            await store.load("b")
        assert info.value.code == ErrorCode.INVALID_SNAPSHOT


# ------------------------------------------------------------------ concurrency


async def test_group_commit_batches_concurrent_saves(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "gc.db") as store:
        template = await snapshot("t")
        snaps = [dataclasses.replace(template, machine_id=f"m{i:03d}") for i in range(100)]
        commits, requests = store.commits, store.write_requests
        await asyncio.gather(*(store.save(s, expected_version=None) for s in snaps))
        assert store.write_requests - requests == 100
        batches = store.commits - commits
        assert 1 <= batches <= 10, batches
        assert len(await store.list()) == 100

        # sequential saves cannot be batched: one commit each
        commits = store.commits
        for i in range(1, 4):
            await store.save(dataclasses.replace(snaps[0], version=i + 1), expected_version=i)
        assert store.commits - commits == 3


async def test_a_lone_save_commits_inline_and_concurrent_ones_on_the_thread(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(tmp_path / "inline.db") as store:
        writer = store._writer
        assert writer is not None
        template = await snapshot("t")
        await store.save(template, expected_version=None)
        assert writer.inline_commits == 1
        snaps = [dataclasses.replace(template, machine_id=f"m{i}") for i in range(20)]
        await asyncio.gather(*(store.save(s, expected_version=None) for s in snaps))
        assert writer.inline_commits == 1  # twenty at once went to the thread, batched
        assert len(await store.list()) == 21


async def test_a_lone_inline_save_that_fails_writes_nothing(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "inline-fail.db") as store:
        snap = await snapshot("m")
        await store.save(snap, expected_version=None)
        with pytest.raises(StateMachineError) as info:
            await store.save(dataclasses.replace(snap, version=9), expected_version=5)
        assert info.value.code == "CONFLICT"
        stored = await store.load("m")
        assert stored is not None and stored.version == snap.version


async def test_inline_save_never_blocks_the_loop_on_another_writer(tmp_path: Path) -> None:
    """Another connection holds the write lock: the save waits on the writer thread
    while the event loop goes on running, and completes once the lock is free."""
    async with SQLiteStore(tmp_path / "held.db", busy_timeout_ms=10_000) as store:
        await store.save(await snapshot("warm"), expected_version=None)
        blocker = raw(store.path)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        save = asyncio.create_task(store.save(await snapshot("m"), expected_version=None))
        await asyncio.sleep(0.3)
        assert not save.done()
        assert ticks >= 5  # the loop was not held by the waiting write
        blocker.execute("ROLLBACK")
        blocker.close()
        await asyncio.wait_for(save, 5)
        tick_task.cancel()
        assert await store.load("m") is not None


async def test_failing_operation_rolls_back_alone(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "sp.db") as store:
        snaps = [await snapshot(f"m{i}") for i in range(2)]

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM machines")
            conn.execute(
                "INSERT INTO journal (machine_id, version, kind, at, data) "
                "VALUES ('m0', 9, 'x', 'now', '{}')"
            )
            raise RuntimeError("boom")

        commits = store.commits
        results = await asyncio.gather(
            store.save(snaps[0], expected_version=None),
            store.run_write(half_then_fail),
            store.save(snaps[1], expected_version=None),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], RuntimeError)
        assert store.commits - commits == 1
        assert [i.machine_id for i in await store.list()] == ["m0", "m1"]
        assert await store.journal("m0") == []


async def test_busy_database_fails_with_store_busy(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "busy.db", busy_timeout_ms=100) as store:
        blocker = raw(store.path)
        blocker.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(StateMachineError) as info:
            await store.save(await snapshot("m"), expected_version=None)
        assert info.value.code == "STORE_BUSY"
        assert 0.09 <= time.monotonic() - t0 < 1.5
        assert await store.load("m") is None  # reads are not blocked by the writer
        blocker.execute("ROLLBACK")
        blocker.close()
        await store.save(await snapshot("m"), expected_version=None)
        assert await store.load("m") is not None


async def test_close_completes_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "close.db"
    store = SQLiteStore(path)
    await store.open()
    template = await snapshot("t")
    tasks = [
        asyncio.create_task(
            store.save(dataclasses.replace(template, machine_id=f"m{i}"), expected_version=None)
        )
        for i in range(50)
    ]
    await asyncio.sleep(0)  # every task has queued its write
    await store.close()
    assert all(t.done() for t in tasks)
    await asyncio.gather(*tasks)
    async with SQLiteStore(path) as again:
        assert len(await again.list()) == 50


async def test_write_during_close_fails_cleanly(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "late.db")
    await store.open()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    with pytest.raises(StateMachineError, match="closed"):
        await store.save(await snapshot("m"), expected_version=None)
    await closing
    await asyncio.gather(store.close(), store.close())


async def test_cancelled_caller_does_not_undo_a_queued_write(tmp_path: Path) -> None:
    path = tmp_path / "cancel.db"
    store = SQLiteStore(path)
    await store.open()
    task = asyncio.create_task(store.save(await snapshot("m"), expected_version=None))
    await asyncio.sleep(0)  # queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()
    async with SQLiteStore(path) as again:
        assert await again.load("m") is not None


async def test_journal_value_json_cannot_hold_is_kept_as_text(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "j.db") as store:
        when = datetime(2024, 1, 2, tzinfo=UTC)
        record = JournalRecord("odd", when, {"when": when, "ok": [1, "a"]})
        await store.save(await snapshot("m"), expected_version=None, journal=[record])
        (entry,) = await store.journal("m")
        assert dict(entry.data) == {"when": str(when), "ok": [1, "a"]}


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    template = asyncio.run(snapshot("t")).to_json()
    children = [run_child(CHILD_WRITER, path, p, "30") for p in ("a", "b")]
    outs = [c.communicate(template, timeout=30) for c in children]
    for child, (out, err) in zip(children, outs, strict=True):
        assert child.returncode == 0, err
        assert out.startswith("ok"), (out, err)
    with raw(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM machines ORDER BY id")]
    conn.close()
    assert ids == [f"a{i:02d}" for i in range(30)] + [f"b{i:02d}" for i in range(30)]


async def test_stale_writer_in_another_process_gets_conflict(tmp_path: Path) -> None:
    path = tmp_path / "stale.db"
    async with SQLiteStore(path) as store:
        await store.save(await snapshot("m", 1), expected_version=None)
        await store.save(await snapshot("m", 2), expected_version=1)
        stale = (await snapshot("m", 2, status="failed")).to_json()
        child = run_child(CHILD_STALE, path)
        out, err = await asyncio.to_thread(child.communicate, stale, 30)
        assert child.returncode == 0, err
        assert out.strip() == "CONFLICT"
        loaded = await store.load("m")
        assert loaded is not None and loaded.status == "active" and loaded.version == 2


def test_packaged_migrations_are_numbered_in_order() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.statements for m in found)
    assert all(all(";" in st for st in m.statements) for m in found)


# -- rows edited by hand, text that is not UTF-8, integers beyond 64 bits


@pytest.mark.parametrize(
    ("sql", "column"),
    [
        ("UPDATE journal SET data = '{oops'", "data"),
        ("UPDATE journal SET data = '[1]'", "data"),
        ("UPDATE journal SET at = 'later'", "at"),
        ("UPDATE journal SET version = 'v'", "version"),
        ("UPDATE machines SET updated_at = 'never'", "updated_at"),
        ("UPDATE machines SET version = -3", "version"),
        ("UPDATE machines SET state = CAST(X'61FF' AS TEXT)", "state"),
    ],
)
async def test_a_corrupt_row_is_corrupt_row(tmp_path: Path, sql: str, column: str) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        at = datetime(2025, 1, 1, tzinfo=UTC)
        record = JournalRecord("note", at, {"n": 1})
        await store.save(await snapshot("m"), expected_version=None, journal=[record])
    with raw(path) as conn:
        conn.execute(sql)
    async with SQLiteStore(path) as store:
        with pytest.raises(StateMachineError) as info:
            await (store.journal("m") if "journal" in sql else store.list())
        assert info.value.code == ErrorCode.CORRUPT_ROW
        assert column in str(info.value)
        assert (await store.load("m")) is not None  # the snapshot itself is fine


async def test_a_naive_journal_time_is_taken_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        record = JournalRecord("k", datetime(2025, 1, 1, tzinfo=UTC), {})
        await store.save(await snapshot("m"), expected_version=None, journal=[record])
    with raw(path) as conn:
        conn.execute("UPDATE journal SET at = '2025-02-03 04:05:06'")
    async with SQLiteStore(path) as store:
        (entry,) = await store.journal("m")
    assert entry.at == datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC)


async def test_text_that_is_not_utf8_is_invalid_text(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.start("flow", "m", {})
        for call in (
            lambda: store.load("m\udc80"),
            lambda: store.journal("m\udc80"),
            lambda: store.list("active\udc80"),
            lambda: store.start("flow", "m\udc80", {}),
            lambda: store.send("m", "GO", event_id="e\udc80"),
        ):
            with pytest.raises(StateMachineError) as info:
                await call()
            assert info.value.code == ErrorCode.INVALID_TEXT, info.value
        assert [i.machine_id for i in await store.list()] == ["m"]


async def test_a_version_of_2_to_the_63_is_refused_not_overflowed(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.save(await snapshot("m", 2**63 - 1), expected_version=None)
        with pytest.raises(StateMachineError) as info:
            await store.save(await snapshot("m", 2**63), expected_version=2**63 - 1)
        assert info.value.code == ErrorCode.INVALID_SNAPSHOT
        stored = await store.load("m")
        assert stored is not None and stored.version == 2**63 - 1


@pytest.mark.parametrize("where", ["/proc/nowhere/s.db", "/proc/s.db"])
async def test_a_file_that_cannot_be_made_is_a_persistence_error(where: str) -> None:
    with pytest.raises(StateMachineError) as info:
        await SQLiteStore(where).open()
    assert info.value.code == ErrorCode.PERSISTENCE_ERROR
    assert where in str(info.value)


async def test_a_parent_that_is_a_file_is_a_persistence_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateMachineError) as info:
        await SQLiteStore(tmp_path / "file" / "s.db").open()
    assert info.value.code == ErrorCode.PERSISTENCE_ERROR
    assert isinstance(info.value.__cause__, OSError)
