"""PostgresStore beyond the contracts: migrations, concurrent claimers, LISTEN wake-ups,
connection errors, a worker run end to end. Needs ``DEPLOYSM_TEST_PG`` (see
``tests/contract/postgres_kind.py``: skipped without it outside CI, failing under CI)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg import sql

import deploysm
from deploysm import ErrorCode, StateMachineConfig, StateMachineError, Transition, Worker
from deploysm.stores import JournalRecord
from deploysm.stores._postgres import PostgresStore
from deploysm.stores._postgres_sql import Listener, migrations


def _helper() -> ModuleType:
    """``tests/contract/postgres_kind.py`` (DSN from the environment, fresh schemas)."""
    if "postgres_kind" in sys.modules:
        return sys.modules["postgres_kind"]
    path = Path(__file__).resolve().parents[1] / "contract" / "postgres_kind.py"
    spec = importlib.util.spec_from_file_location("postgres_kind", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["postgres_kind"] = module
    spec.loader.exec_module(module)
    return module


pk = _helper()
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def dsn() -> str:
    value: str = pk.pg_dsn()
    return value


@pytest.fixture
async def schema(dsn: str) -> AsyncIterator[str]:
    name: str = pk.fresh_schema()
    try:
        yield name
    finally:
        await pk.drop_schema(dsn, name)


async def fetch(dsn: str, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


def config() -> StateMachineConfig[Any, Any, Any]:
    return StateMachineConfig(
        id="deploy",
        initial_state="idle",
        states=["idle", "validating", "deploying", "completed"],
        events=["START", "VALIDATED", "DEPLOYED"],
        transitions=[
            Transition("idle", "validating", "START"),
            Transition("validating", "deploying", "VALIDATED"),
            Transition("deploying", "completed", "DEPLOYED"),
        ],
    )


async def snapshot(machine_id: str, version: int) -> deploysm.SerializableState:
    sm = deploysm.create_state_machine(config(), {"n": 1}, machine_id=machine_id)
    snap = await sm.serialize()
    snap.version = version
    return snap


# ------------------------------------------------------------------------ migrations


async def test_migrations_are_recorded_and_idempotent(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        assert await store.migrate() == []
        await store.start("wf", "m", {})
    async with PostgresStore(dsn, schema=schema) as again:
        assert await again.migrate() == []
        assert [i.machine_id for i in await again.list()] == ["m"]
    rows = await fetch(
        dsn, sql.SQL("SELECT version, name FROM {}.deploysm_schema").format(sql.Identifier(schema))
    )
    assert rows == [(m.version, m.name) for m in migrations()]
    tables = await fetch(
        dsn,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        (schema,),
    )
    assert {t for (t,) in tables} == {
        "deploysm_schema",
        "deploysm_meta",
        "machines",
        "journal",
        "inbox",
    }


async def test_concurrent_first_opens_migrate_once(dsn: str, schema: str) -> None:
    stores = [PostgresStore(dsn, schema=schema, min_size=1, max_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        results = await asyncio.gather(*(s.migrate() for s in stores))
        assert results == [[]] * 4
        await stores[0].start("wf", "m", {})
        assert [i.machine_id for i in await stores[3].list()] == ["m"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    rows = await fetch(
        dsn, sql.SQL("SELECT version FROM {}.deploysm_schema").format(sql.Identifier(schema))
    )
    assert sorted(v for (v,) in rows) == [m.version for m in migrations()]


async def test_concurrent_migrate_on_a_fresh_schema(dsn: str, schema: str) -> None:
    stores = [PostgresStore(dsn, schema=schema) for _ in range(6)]
    applied = await asyncio.gather(*(s.migrate() for s in stores))
    every = [m.version for m in migrations()]
    assert sorted(applied, key=len, reverse=True) == [every] + [[]] * 5


async def test_newer_schema_is_refused(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema):
        pass
    await fetch(
        dsn,
        sql.SQL("INSERT INTO {}.deploysm_schema (version, name) VALUES (999, 'future')").format(
            sql.Identifier(schema)
        ),
    )
    store = PostgresStore(dsn, schema=schema)
    for call in (store.open, store.migrate):
        with pytest.raises(StateMachineError) as info:
            await call()
        assert info.value.code == ErrorCode.SCHEMA_TOO_NEW
        assert "999" in info.value.message
    await store.close()


# --------------------------------------------------------------------------- saves


async def _blocked_by(dsn: str, pid: int) -> None:
    """Until some backend waits for a lock that backend ``pid`` holds."""
    for _ in range(500):
        query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        rows = await fetch(dsn, query, (pid,))
        if rows[0][0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the save never waited for the row lock")


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (sql.SQL("version = 2"), ErrorCode.CONFLICT, "found 2"),
        (
            sql.SQL(
                "lease_owner = 'w9', lease_expires_at = now() + interval '1 minute',"
                " fencing_token = fencing_token + 1"
            ),
            ErrorCode.LEASE_LOST,
            "no longer valid",
        ),
    ],
    ids=["version", "lease"],
)
async def test_a_save_beaten_inside_its_statement_says_why(
    dsn: str, schema: str, change: sql.SQL, code: ErrorCode, says: str
) -> None:
    # A save is one statement; its snapshot still shows the row it expected when
    # another transaction changes that row under it, so it must look again to say why.
    async with PostgresStore(dsn, schema=schema) as store:
        await store.save(await snapshot("m", 1), expected_version=None, workflow="wf")
        async with await psycopg.AsyncConnection.connect(dsn) as other:
            query = sql.SQL("UPDATE {} SET {} WHERE id = 'm'")
            await other.execute(query.format(sql.Identifier(schema, "machines"), change))
            saving = asyncio.ensure_future(
                store.save(
                    await snapshot("m", 2), expected_version=1, journal=[JournalRecord("x", T0, {})]
                )
            )
            await _blocked_by(dsn, other.info.backend_pid)
            await other.commit()
        with pytest.raises(StateMachineError) as info:
            await saving
        assert info.value.code == code and says in str(info.value)
        assert await store.journal("m") == []


async def test_journal_records_are_kept_in_order_and_exactly(dsn: str, schema: str) -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    east = timezone(timedelta(hours=5, minutes=30))
    records = [
        JournalRecord(f"k{i}", T0 + timedelta(microseconds=i), {"i": i, "s": "\u00e9"})
        for i in range(25)
    ]
    records += [
        JournalRecord("east", datetime(2024, 5, 1, 5, 30, 0, 1, tzinfo=east), {"o": Odd()}),
        JournalRecord("naive", datetime(2024, 5, 1, 0, 0, 0, 2), {"n": None, "q": '"[]'}),
    ]
    async with PostgresStore(dsn, schema=schema) as store:
        await store.save(await snapshot("m", 1), expected_version=None, journal=records[:1])
        await store.save(await snapshot("m", 2), expected_version=1, journal=records[1:])
        entries = await store.journal("m")
    assert [e.kind for e in entries] == [r.kind for r in records]
    assert [e.version for e in entries] == [1] + [2] * (len(records) - 1)
    assert [e.at for e in entries[:25]] == [r.at for r in records[:25]]
    assert entries[25].at == datetime(2024, 5, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert entries[26].at == datetime(2024, 5, 1, 0, 0, 0, 2, tzinfo=UTC)
    assert entries[3].data == {"i": 3, "s": "\u00e9"}
    assert entries[25].data == {"o": "odd"} and entries[26].data == {"n": None, "q": '"[]'}


# -------------------------------------------------------------------------- claims


async def test_concurrent_claimers_never_share_a_machine(dsn: str, schema: str) -> None:
    stores = [PostgresStore(dsn, schema=schema, max_size=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        ids = [f"m{i:02d}" for i in range(50)]
        for mid in ids:
            await stores[0].start("wf", mid, {})
        gate = asyncio.Event()

        async def claimer(k: int) -> list[str]:
            got: list[str] = []
            await gate.wait()
            while claims := await stores[k].claim(f"w{k}", limit=3, lease_ms=60_000):
                got += [c.machine_id for c in claims]
            return got

        tasks = [asyncio.ensure_future(claimer(k)) for k in range(4)]
        gate.set()
        results = await asyncio.gather(*tasks)
        claimed = [mid for r in results for mid in r]
        assert sorted(claimed) == ids  # every machine, each exactly once
        assert await stores[0].claim("late", limit=50, lease_ms=1000) == []
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_an_undecodable_row_does_not_block_other_claims(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        for mid in ("a", "b"):
            await store.save(await snapshot(mid, 1), expected_version=None, workflow="wf")
            await store.send(mid, "START")
        await pk.tamper(store, "a", b"\x00garbage")
        with caplog.at_level(logging.ERROR, logger="deploysm.stores"):
            claims = await store.claim("w", limit=5, lease_ms=60_000)
        assert [c.machine_id for c in claims] == ["b"]
        assert "machine a parked (needs_attention)" in caplog.text
        assert await store.claim("w", limit=5, lease_ms=60_000) == []  # a is parked
        assert [i.machine_id for i in await store.list("needs_attention")] == ["a"]
        with pytest.raises(StateMachineError) as info:
            await store.load("a")
        assert info.value.code == ErrorCode.INVALID_SNAPSHOT


async def test_user_data_round_trips_exactly(dsn: str, schema: str) -> None:
    context = {"z": 1, "a": "nul\x00here", "big": 1e20, "f": 0.1}
    async with PostgresStore(dsn, schema=schema) as store:
        await store.start("wf", "m", context)
        await store.send("m", "GO", event_id="e")
        (claim,) = await store.claim("w", limit=1, lease_ms=60_000)
        assert claim.context == context and list(claim.context) == ["z", "a", "big", "f"]
        assert isinstance(claim.context["big"], float)
        item = await store.next_event("m")
        assert item is not None
        await store.send("m", {"type": "X", "payload": {"s": "\x00", "n": [1.5, None]}})
        rec = JournalRecord("note", datetime.now(UTC), {"msg": "a\x00b", "raw": "\\u0000"})
        await store.save(
            await snapshot("m", 1),
            expected_version=0,
            journal=[rec],
            token=claim.token,
            consumed=[item.seq],
        )
        nxt = await store.next_event("m")
        assert nxt is not None and nxt.event.payload == {"s": "\x00", "n": [1.5, None]}
        (entry,) = await store.journal("m")
        assert entry.data == {"msg": "a\ufffdb", "raw": "\\u0000"}


# ------------------------------------------------------------------------ wake-ups


async def test_listen_wakes_a_waiting_store_at_once(dsn: str, schema: str) -> None:
    async with (
        PostgresStore(dsn, schema=schema) as waiting,
        PostgresStore(dsn, schema=schema) as sender,
    ):
        await sender.start("wf", "m", {})
        await waiting.wait_for_work(0.01)  # the LISTEN connection is up from here on
        latencies = []
        for _ in range(5):
            waiter = asyncio.ensure_future(waiting.wait_for_work(2.0))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await sender.send("m", "GO")
            await asyncio.wait_for(waiter, 3.0)
            latencies.append(time.perf_counter() - t0)
        assert max(latencies) < 1.5  # returned well before the 2 s timeout
        print(
            f"\nLISTEN wake-up latency (send -> wait_for_work returns): median "
            f"{statistics.median(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms"
        )


async def test_listener_reconnects_after_its_connection_drops(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        await store.start("wf", "m", {})
        await store.wait_for_work(0.01)
        listener = store._listener
        assert listener is not None
        await asyncio.wait_for(listener.ready.wait(), 5.0)  # connecting may take > 10 ms
        assert listener.backend_pid is not None
        old = listener.backend_pid
        await fetch(dsn, "SELECT pg_terminate_backend(%s)", (old,))
        for _ in range(250):  # it reconnects within ~50 ms; give it 5 s
            if listener.backend_pid not in (None, old):
                break
            await asyncio.sleep(0.02)
        assert listener.backend_pid not in (None, old)
        waiter = asyncio.ensure_future(store.wait_for_work(3.0))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await store.send("m", "GO")
        await asyncio.wait_for(waiter, 4.0)
        assert time.perf_counter() - t0 < 1.5


async def test_a_notification_while_nobody_waits_ends_the_next_wait(dsn: str) -> None:
    # A worker claims, then waits: a notification in between (here: before the wait)
    # must end that wait at once, not leave it to its poll. A channel of its own, so
    # other stores on this database cannot wake it.
    channel = f"deploysm_test_{uuid.uuid4().hex[:12]}"
    listener = Listener(dsn, channel)

    async def no_timer() -> float | None:
        return None

    try:
        await listener.wait_for_work(0.01, no_timer)
        await asyncio.wait_for(listener.ready.wait(), 5.0)
        # LISTEN coming up counted as a wake (what came before it is lost); take it
        assert await listener.wait_for_work(0.01, no_timer) in ("pending", "timeout")
        assert await listener.wait_for_work(0.05, no_timer) == "timeout"
        received = listener.received
        await fetch(dsn, "SELECT pg_notify(%s, 'm')", (channel,))
        for _ in range(500):
            if listener.received > received:
                break
            await asyncio.sleep(0.01)
        assert listener.received == received + 1  # it came while nobody waited
        woke = await asyncio.wait_for(listener.wait_for_work(600.0, no_timer), 10.0)
        assert woke == "pending"
        assert await listener.wait_for_work(0.05, no_timer) == "timeout"  # once only
        waiter = asyncio.ensure_future(listener.wait_for_work(600.0, no_timer))
        await asyncio.sleep(0.05)
        await fetch(dsn, "SELECT pg_notify(%s, 'm')", (channel,))
        assert await asyncio.wait_for(waiter, 10.0) == "notified"
    finally:
        await listener.stop()


async def test_wait_for_work_ends_at_the_next_timer(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        await store.start("wf", "m", {})
        (claim,) = await store.claim("w", limit=1, lease_ms=60_000)
        await store.save(await snapshot("m", 1), expected_version=0, token=claim.token)
        wake = datetime.now(UTC) + timedelta(milliseconds=300)
        await store.release("m", claim.token, wake_at=wake)
        await store.wait_for_work(0.01)
        t0 = time.perf_counter()
        claims: list[Any] = []
        while not claims and time.perf_counter() - t0 < 2.0:
            # other stores on this database (other tests) may wake it early: wait again
            await store.wait_for_work(5.0)
            claims = await store.claim("w", limit=1, lease_ms=1000)
        assert [c.machine_id for c in claims] == ["m"]
        assert time.perf_counter() - t0 < 2.0  # not the 5 s: the timer ended the wait


async def test_close_ends_a_pending_wait_without_reopening(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    await store.wait_for_work(0.01)
    waiter = asyncio.ensure_future(store.wait_for_work(5.0))
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await store.close()
    await asyncio.wait_for(waiter, 2.0)
    assert time.perf_counter() - t0 < 1.0
    assert store._pool is None and store._listener is None


async def test_wait_for_work_on_an_unreachable_server_just_waits() -> None:
    store = PostgresStore("postgresql://deploysm@127.0.0.1:1/test")
    t0 = time.perf_counter()
    await store.wait_for_work(0.3)
    assert 0.25 <= time.perf_counter() - t0 < 2.0
    await store.close()


# -------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://deploysm:s3cr3t-pw@127.0.0.1:1/test",
        "host=127.0.0.1 port=1 dbname=test user=deploysm password=s3cr3t-pw",
    ],
    ids=["url", "keywords"],
)
async def test_unreachable_server_is_store_unavailable_without_the_password(bad: str) -> None:
    store = PostgresStore(bad, connect_timeout=3)
    assert "s3cr3t-pw" not in repr(store)
    for call in (store.open, lambda: store.load("m")):
        with pytest.raises(StateMachineError) as info:
            await call()
        err = info.value
        assert err.code == "STORE_UNAVAILABLE"
        assert "check the DSN" in err.message and "server is running" in err.message
        assert "127.0.0.1" in err.message and "[REDACTED]" in err.message
        text = "".join(traceback.format_exception(err))
        assert "s3cr3t-pw" not in text
    await store.close()


def test_bad_dsn_is_refused_at_once() -> None:
    with pytest.raises(StateMachineError) as info:
        PostgresStore("host=x password=s3cr3t-pw nonsense")
    assert info.value.code == ErrorCode.INVALID_STORE_URL
    assert "s3cr3t-pw" not in info.value.message


async def test_pool_recovers_after_its_connections_are_killed(dsn: str, schema: str) -> None:
    app = f"deploysm_t_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in dsn else "?"
    async with PostgresStore(f"{dsn}{sep}application_name={app}", schema=schema, max_size=2) as s:
        await s.start("wf", "m", {})
        await fetch(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(len(await s.list()))
            except StateMachineError as e:
                assert e.code == "STORE_UNAVAILABLE"
                outcomes.append(-1)
        assert outcomes[-1] == 1


async def test_store_opens_itself_and_closes_idempotently(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    assert await store.load("m") is None  # opened on first use
    await store.close()
    await store.close()
    async with store:
        await store.start("wf", "m", {})
    assert [i.machine_id for i in await store.list()] == ["m"]  # reopened
    await store.close()


# ------------------------------------------------------------------- end to end


async def test_two_workers_run_machines_to_completion(dsn: str, schema: str) -> None:
    stores = [PostgresStore(dsn, schema=schema) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        ids = [f"d{i}" for i in range(10)]
        for mid in ids:
            await stores[0].start("deploy", mid, {"n": 1})
            for event in ("START", "VALIDATED", "DEPLOYED"):
                await stores[1].send(mid, event)
        workers = [
            Worker(s, {"deploy": config}, concurrency=4, worker_id=f"w{k}", lease_ms=10_000)
            for k, s in enumerate(stores)
        ]
        await asyncio.gather(*(w.run_until_idle() for w in workers))
        infos = await stores[0].list()
        assert [(i.machine_id, i.status) for i in infos] == [(m, "completed") for m in ids]
        for mid in ids:
            assert await stores[1].next_event(mid) is None
            kinds = [e.kind for e in await stores[0].journal(mid)]
            assert kinds == ["started", "committed", "committed", "committed", "completed"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_journal_data_that_is_not_an_object_is_corrupt_row(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        record = JournalRecord("k", T0, {"a": 1})
        await store.save(await snapshot("m", 1), expected_version=None, journal=[record])
        await fetch(
            dsn, sql.SQL("UPDATE {}.journal SET data = '[1, 2]'").format(sql.Identifier(schema))
        )
        with pytest.raises(StateMachineError) as info:
            await store.journal("m")
        assert info.value.code == ErrorCode.CORRUPT_ROW and "data" in str(info.value)


async def test_text_that_is_not_utf8_is_invalid_text(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        for call in (
            lambda: store.load("m\udc80"),
            lambda: store.journal("m\udc80"),
            lambda: store.start("deploy", "m\udc80", {}),
        ):
            with pytest.raises(StateMachineError) as info:
                await call()
            assert info.value.code == ErrorCode.INVALID_TEXT, info.value
        assert await store.list() == []
