"""SQLiteStore as a RuntimeStore: starts, inboxes, claims, leases and fencing, wake-ups,
the 0001 -> 0002 upgrade, and several processes sharing one file.

Leases and timers are wall-clock: the lease tests use leases of 50 ms and sleep a
little past them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import deploysm
from deploysm import ErrorCode, Event, SerializableState, StateMachineConfig, StateMachineError
from deploysm.stores import JournalRecord, JSONCodec
from deploysm.stores._runtime import RuntimeStore
from deploysm.stores._sqlite import SQLiteStore
from deploysm.stores._sqlite_runtime import to_us
from deploysm.stores._sqlite_writer import migrations
from deploysm.testing import VirtualClock

SRC = str(Path(deploysm.__file__).resolve().parent.parent)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LEASE_MS = 50
EXPIRED_S = 0.08


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


IN_FLIGHT = SerializableState.from_json(
    (FIXTURES / "snapshot_v1_in_flight.json").read_text()
).in_flight
assert IN_FLIGHT is not None


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5, isolation_level=None)


def column(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = raw(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def lease_of(path: Path, machine_id: str) -> tuple[Any, ...]:
    sql = "SELECT lease_owner, fencing_token, wake_at FROM machines WHERE id = ?"
    return column(path, sql, machine_id)[0]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "rt.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def code_of(awaitable: Any) -> str:
    with pytest.raises(StateMachineError) as info:
        await awaitable
    return info.value.code


# ------------------------------------------------------------------------- start


async def test_is_a_runtime_store(store: SQLiteStore) -> None:
    assert isinstance(store, RuntimeStore)


async def test_started_machine_has_no_snapshot_yet(store: SQLiteStore) -> None:
    await store.start("flow", "m", {"service": "api", "when": datetime(2025, 1, 1, tzinfo=UTC)})
    assert await store.load("m") is None
    (info,) = await store.list()
    assert (info.machine_id, info.workflow, info.status, info.version) == ("m", "flow", "active", 0)
    assert await store.list("completed") == []
    assert await code_of(store.start("flow", "m", {})) == ErrorCode.CONFLICT
    assert await code_of(store.start("flow", "x", {"f": object()})) == "INVALID_CONTEXT"
    assert [i.machine_id for i in await store.list()] == ["m"]

    (claim,) = await store.claim("w1", limit=5, lease_ms=10_000)
    assert (claim.machine_id, claim.workflow, claim.token, claim.snapshot) == ("m", "flow", 1, None)
    assert claim.context == {"service": "api", "when": "2025-01-01T00:00:00+00:00"}
    assert claim.cancel_requested is False

    # the first save of a started machine expects version 0 and carries the token
    await store.save(await snapshot("m", 1), expected_version=0, token=claim.token)
    loaded = await store.load("m")
    assert loaded is not None and loaded.version == 1
    (info,) = await store.list()
    assert (info.workflow, info.definition_id, info.state) == ("flow", "flow", "idle")


# ------------------------------------------------------------------------- inbox


async def test_send_queues_in_order_and_consumed_events_are_delivered(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    assert await store.next_event("m") is None
    assert await store.send("m", "GO", event_id="e1") is True
    assert await store.send("m", Event("FINISH", {"by": "bob"}, correlation_id="c-7")) is True
    assert await store.send("m", {"type": "GO", "payload": [1, 2]}, event_id="e3") is True
    first = await store.next_event("m")
    assert first is not None
    assert (first.event_id, first.event.type, first.event.payload) == ("e1", "GO", None)
    assert first.event.timestamp is not None and first.event.timestamp.tzinfo is not None
    assert await store.next_event("m") == first  # reading does not consume

    (claim,) = await store.claim("w", limit=1, lease_ms=10_000)
    await store.save(
        await snapshot("m", 1), expected_version=0, token=claim.token, consumed=[first.seq]
    )
    second = await store.next_event("m")
    assert second is not None and second.seq > first.seq
    assert (second.event.type, second.event.payload) == ("FINISH", {"by": "bob"})
    assert second.event.correlation_id == "c-7"
    await store.save(
        await snapshot("m", 2), expected_version=1, token=claim.token, consumed=[second.seq]
    )
    third = await store.next_event("m")
    assert third is not None and third.event.payload == [1, 2]
    delivered = column(store.path, "SELECT count(*) FROM inbox WHERE delivered_at IS NOT NULL")
    assert delivered == [(2,)]


async def test_event_ids_are_deduplicated_per_machine_even_after_delivery(
    store: SQLiteStore,
) -> None:
    await store.start("flow", "a", {})
    await store.start("flow", "b", {})
    assert await store.send("a", "GO", event_id="x") is True
    assert await store.send("a", "FINISH", event_id="x") is False
    assert await store.send("b", "GO", event_id="x") is True  # per machine
    item = await store.next_event("a")
    assert item is not None
    (claim,) = await store.claim("w", limit=1, lease_ms=10_000)
    await store.save(
        await snapshot("a"), expected_version=0, token=claim.token, consumed=[item.seq]
    )
    assert await store.send("a", "GO", event_id="x") is False  # delivered, still known
    assert await store.next_event("a") is None


async def test_send_errors(store: SQLiteStore) -> None:
    assert await code_of(store.send("nope", "GO")) == ErrorCode.UNKNOWN_MACHINE
    await store.save(await snapshot("done", status="completed"), expected_version=None)
    assert await code_of(store.send("done", "GO", event_id="late")) == ErrorCode.NOT_ACTIVE
    await store.start("flow", "m", {})
    assert await code_of(store.send("m", "")) == "INVALID_EVENT"
    assert await code_of(store.send("m", 42)) == "INVALID_EVENT"
    assert await code_of(store.send("m", Event("GO", {1, 2}))) == "INVALID_EVENT"
    assert await code_of(store.send("m", "GO", event_id="")) == "INVALID_EVENT"
    assert await store.next_event("m") is None
    assert await store.next_event("nope") is None


async def test_duplicate_to_a_finished_machine_is_ignored_not_refused(store: SQLiteStore) -> None:
    await store.save(await snapshot("m"), expected_version=None)
    assert await store.send("m", "GO", event_id="e") is True
    await store.save(await snapshot("m", 2, status="completed"), expected_version=1)
    assert await store.send("m", "GO", event_id="e") is False
    assert await code_of(store.send("m", "GO", event_id="f")) == ErrorCode.NOT_ACTIVE


# ------------------------------------------------------------------------- claims


async def test_claim_takes_only_active_machines_with_work(store: SQLiteStore) -> None:
    await store.save(await snapshot("idle"), expected_version=None)  # no work
    await store.save(await snapshot("busy", in_flight=IN_FLIGHT), expected_version=None)
    await store.save(await snapshot("over", status="completed"), expected_version=None)
    await store.save(await snapshot("event"), expected_version=None)
    await store.send("event", "GO")
    await store.save(await snapshot("cancel"), expected_version=None)
    await store.request_cancel("cancel")
    await store.start("flow", "new", {})
    assert column(store.path, "SELECT busy FROM machines WHERE id = 'busy'") == [(1,)]

    assert await store.claim("w", limit=0, lease_ms=10_000) == []
    first = await store.claim("w", limit=2, lease_ms=10_000)
    rest = await store.claim("w", limit=10, lease_ms=10_000)
    assert [c.machine_id for c in first] == ["busy", "cancel"]  # id order
    assert [c.machine_id for c in rest] == ["event", "new"]
    assert await store.claim("w2", limit=10, lease_ms=10_000) == []  # all leased
    claims = {c.machine_id: c for c in first + rest}
    assert claims["cancel"].cancel_requested and not claims["busy"].cancel_requested
    busy = claims["busy"].snapshot
    assert busy is not None and busy.in_flight == IN_FLIGHT
    assert all(c.token == 1 and c.workflow == "flow" for c in claims.values())
    assert lease_of(store.path, "new")[:2] == ("w", 1)
    assert await code_of(store.request_cancel("nope")) == ErrorCode.UNKNOWN_MACHINE


async def test_a_bad_snapshot_is_parked_and_the_claim_takes_the_others(store: SQLiteStore) -> None:
    await store.start("flow", "a", {})
    await store.save(await snapshot("b"), expected_version=None)
    await store.send("b", "GO")
    with raw(store.path) as conn:
        conn.execute("UPDATE machines SET snapshot = x'00ff' WHERE id = 'b'")
    conn.close()
    assert [c.machine_id for c in await store.claim("w", limit=5, lease_ms=10_000)] == ["a"]
    assert lease_of(store.path, "a")[:2] == ("w", 1)
    assert lease_of(store.path, "b") == (None, 0, None)
    sql = "SELECT status, snapshot FROM machines WHERE id = 'b'"
    assert column(store.path, sql) == [("needs_attention", b"\x00\xff")]


async def test_release_wake_at_makes_a_machine_due_later(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    (claim,) = await store.claim("w", limit=1, lease_ms=10_000)
    await store.save(await snapshot("m"), expected_version=0, token=claim.token)
    assert await store.release("m", claim.token + 1, wake_at=None) is False
    soon = datetime.now(UTC) + timedelta(milliseconds=150)
    assert await store.release("m", claim.token, wake_at=soon) is True
    assert lease_of(store.path, "m") == (None, 1, to_us(soon))
    assert await store.claim("w", limit=1, lease_ms=10_000) == []  # not due yet
    await asyncio.sleep(0.16)
    (again,) = await store.claim("w2", limit=1, lease_ms=10_000)
    assert again.token == 2 and again.snapshot is not None
    assert lease_of(store.path, "m") == ("w2", 2, None)  # a claim clears the timer
    assert await store.release("m", 2, wake_at=None) is True
    assert await store.claim("w", limit=1, lease_ms=10_000) == []  # no work, no timer


def test_wake_at_time_representation() -> None:
    aware = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    naive_utc = datetime(2025, 5, 6, 5, 8, 9, 123456)
    assert to_us(aware) == to_us(naive_utc) == to_us(aware.astimezone(UTC))
    assert to_us(aware + timedelta(microseconds=1)) == to_us(aware) + 1
    assert to_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0


async def test_claim_only_of_the_workflows_given(store: SQLiteStore) -> None:
    await store.start("deploy", "a", {})
    await store.start("backup", "b", {})
    await store.save(await snapshot("c", in_flight=IN_FLIGHT), expected_version=None)
    await store.start("", "d", {})  # no workflow name: its definition id stands for it
    await store.save(await snapshot("d", 1), expected_version=0)
    await store.send("d", "GO")
    assert await store.claim("w", limit=5, lease_ms=9_000, workflows=[]) == []
    claims = await store.claim("w", limit=5, lease_ms=9_000, workflows=("flow", "backup"))
    assert [(c.machine_id, c.workflow) for c in claims] == [
        ("b", "backup"),
        ("c", "flow"),
        ("d", "flow"),
    ]
    (a,) = await store.claim("w", limit=5, lease_ms=9_000, workflows=frozenset({"deploy"}))
    assert a.machine_id == "a"


async def test_cancel_requested(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    assert await store.cancel_requested("m") is False
    await store.request_cancel("m")
    assert await store.cancel_requested("m") is True
    assert await store.cancel_requested("ghost") is False


# ------------------------------------------------------------------- leases, fencing


async def test_save_lease_rules(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    (claim,) = await store.claim("w", limit=1, lease_ms=10_000)
    await store.save(await snapshot("m", 1), expected_version=0, token=claim.token)
    wrong = store.save(await snapshot("m", 2), expected_version=1, token=claim.token + 1)
    assert await code_of(wrong) == ErrorCode.LEASE_LOST
    tokenless = store.save(await snapshot("m", 2), expected_version=1)  # w's lease is live
    assert await code_of(tokenless) == ErrorCode.LEASE_LOST
    stale = store.save(await snapshot("m", 5), expected_version=4, token=claim.token)
    assert await code_of(stale) == ErrorCode.CONFLICT  # right token, wrong version
    fresh = store.save(await snapshot("m", 1), expected_version=None, token=claim.token + 1)
    assert await code_of(fresh) == ErrorCode.LEASE_LOST  # the lease is checked first
    loaded = await store.load("m")
    assert loaded is not None and loaded.version == 1

    assert await store.release("m", claim.token, wake_at=None)
    await store.save(await snapshot("m", 2), expected_version=1)  # no lease: allowed
    # the token stays the machine's until another claim: a released worker's save passes
    await store.save(await snapshot("m", 3), expected_version=2, token=claim.token)


async def test_lease_taken_over_after_expiry_fences_the_old_owner(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    await store.send("m", "GO", event_id="e1")
    (old,) = await store.claim("a", limit=1, lease_ms=LEASE_MS)
    item = await store.next_event("m")
    assert item is not None
    assert await store.claim("b", limit=1, lease_ms=LEASE_MS) == []  # lease live
    await asyncio.sleep(EXPIRED_S)
    (new,) = await store.claim("b", limit=1, lease_ms=10_000)
    assert new.token == old.token + 1 and new.snapshot is None
    assert lease_of(store.path, "m")[:2] == ("b", 2)

    record = JournalRecord("committed", datetime.now(UTC), {"by": "a"})
    save = store.save(
        await snapshot("m", 1),
        expected_version=0,
        journal=[record],
        token=old.token,
        consumed=[item.seq],
    )
    assert await code_of(save) == ErrorCode.LEASE_LOST
    assert await store.load("m") is None  # nothing written: no snapshot,
    assert await store.journal("m") == []  # no journal,
    assert await store.next_event("m") == item  # the event not consumed
    assert await store.renew("a", {"m": old.token}, 10_000) == {"m"}
    assert await store.release("m", old.token, wake_at=None) is False
    assert lease_of(store.path, "m")[:2] == ("b", 2)  # b still holds it

    await store.save(
        await snapshot("m", 1), expected_version=0, token=new.token, consumed=[item.seq]
    )
    assert await store.next_event("m") is None
    # the new owner wrote: the old one still learns that it lost the lease
    late = store.save(await snapshot("m", 1), expected_version=0, token=old.token)
    assert await code_of(late) == ErrorCode.LEASE_LOST
    loaded = await store.load("m")
    assert loaded is not None and loaded.version == 1


async def test_renew_keeps_a_lease_alive(store: SQLiteStore) -> None:
    await store.start("flow", "m", {})
    await store.start("flow", "n", {})
    claims = await store.claim("a", limit=2, lease_ms=LEASE_MS)
    held = {c.machine_id: c.token for c in claims}
    for _ in range(3):
        await asyncio.sleep(LEASE_MS / 2000)
        assert await store.renew("a", held, LEASE_MS) == set()
    assert await store.claim("b", limit=5, lease_ms=LEASE_MS) == []
    assert await store.renew("b", held, LEASE_MS) == {"m", "n"}  # not b's leases
    assert await store.renew("a", {"m": 7, "ghost": 1}, LEASE_MS) == {"m", "ghost"}
    assert await store.renew("a", {}, LEASE_MS) == set()
    assert await store.release("m", held["m"], wake_at=None)
    assert await store.renew("a", held, LEASE_MS) == {"m"}  # released: no longer held


# ------------------------------------------------------------------------- wake-ups


async def test_wait_for_work_times_out_when_idle(store: SQLiteStore) -> None:
    started = time.monotonic()
    await store.wait_for_work(0.2)
    assert 0.18 < time.monotonic() - started < 1.0
    await store.wait_for_work(0)  # no wait at all


async def test_wait_for_work_sees_work_that_came_between_claim_and_wait(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "p.db") as a, SQLiteStore(tmp_path / "p.db") as b:
        a.poll_interval_s = 0.02
        assert await a.claim("w", limit=5, lease_ms=60_000) == []
        await b.start("flow", "m", {})  # another process's start: no notification
        started = time.monotonic()
        await a.wait_for_work(5)
        assert time.monotonic() - started < 0.5
        (claim,) = await a.claim("w", limit=5, lease_ms=60_000)
        assert claim.machine_id == "m"


async def test_wait_for_work_does_not_return_for_a_due_timer(store: SQLiteStore) -> None:
    """Like MemoryStore: timers and expired leases are taken by the worker's next claim
    (after ``max_wait_s``), not announced."""
    await store.start("flow", "m", {})
    (claim,) = await store.claim("w", limit=1, lease_ms=10_000)
    await store.save(await snapshot("m"), expected_version=0, token=claim.token)
    soon = datetime.now(UTC) + timedelta(milliseconds=30)
    assert await store.release("m", claim.token, wake_at=soon)
    assert await store.claim("w", limit=1, lease_ms=10_000) == []
    started = time.monotonic()
    await store.wait_for_work(0.2)
    assert time.monotonic() - started >= 0.19
    assert len(await store.claim("w", limit=1, lease_ms=10_000)) == 1


async def test_wait_for_work_looks_for_work_of_the_workflows_last_claimed(
    store: SQLiteStore,
) -> None:
    """Work only another worker's workflows can take does not wake this one up (else
    it would claim nothing and wait again, in a loop)."""
    async with SQLiteStore(store.path) as other:
        await store.start("other", "m", {})
        assert await store.claim("w", limit=5, lease_ms=60_000, workflows={"flow"}) == []
        waiting = asyncio.create_task(store.wait_for_work(5))
        await other.start("other", "n", {})  # commits work of another workflow
        await asyncio.sleep(0.15)
        assert not waiting.done()
        await other.start("flow", "f", {})  # and now work this worker can take
        await asyncio.wait_for(waiting, 1)
        claims = await store.claim("w", limit=5, lease_ms=60_000, workflows={"flow"})
        assert [c.machine_id for c in claims] == ["f"]


async def test_wait_for_work_is_woken_by_this_store(store: SQLiteStore) -> None:
    store.poll_interval_s = 10  # only the in-process notification can wake it
    for i in range(4):
        await store.save(await snapshot(f"m{i}"), expected_version=None)
    assert await store.claim("w", limit=1, lease_ms=60_000) == []  # saved, no events: no work
    for wake in (
        lambda: store.send("m0", "GO"),
        lambda: store.request_cancel("m1"),
        lambda: store.start("flow", "m9", {}),
        lambda: store.release("m0", 1, wake_at=None),
    ):
        waiting = asyncio.create_task(store.wait_for_work(5))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await wake()
        await asyncio.wait_for(waiting, 1)
        await store.claim("w", limit=5, lease_ms=60_000)  # leased: no claimable work left


async def test_wait_for_work_polls_other_connections(tmp_path: Path) -> None:
    """Another store object on the same file (as another process would be): its send
    is seen by polling, within a few poll intervals."""
    async with SQLiteStore(tmp_path / "p.db") as a, SQLiteStore(tmp_path / "p.db") as b:
        await a.save(await snapshot("m"), expected_version=None)
        waiting = asyncio.create_task(a.wait_for_work(5))
        await asyncio.sleep(0.12)
        assert not waiting.done()  # other commits, but no work: keeps waiting
        started = time.monotonic()
        assert await b.send("m", "GO")
        await asyncio.wait_for(waiting, 1)
        assert time.monotonic() - started < 0.5


def test_wait_for_work_is_woken_from_another_event_loop(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "loops.db")
    store.poll_interval_s = 10
    asyncio.run(store.start("flow", "m", {}))
    asyncio.run(store.save(await_snapshot("m"), expected_version=0))
    took: list[float] = []
    ready = threading.Event()

    def waiter() -> None:
        async def main() -> None:
            ready.set()
            started = time.monotonic()
            await store.wait_for_work(5)
            took.append(time.monotonic() - started)

        asyncio.run(main())

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait(2)
    time.sleep(0.05)
    asyncio.run(store.send("m", "GO"))
    thread.join(3)
    asyncio.run(store.close())
    assert took and took[0] < 1.0


def await_snapshot(machine_id: str) -> SerializableState:
    return asyncio.run(snapshot(machine_id))


# ------------------------------------------------------------------------- migration


V1_TIMES = ("2024-01-01T00:00:00.000000+00:00", "2024-01-02T00:00:00.000000+00:00")


def _v1_database(path: Path, snaps: list[SerializableState]) -> None:
    conn = raw(path)
    conn.execute(
        "CREATE TABLE deploysm_schema ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for stmt in migrations()[0].statements:
        conn.execute(stmt)
    conn.execute("INSERT INTO deploysm_schema VALUES (1, 'machines_and_journal', 'then')")
    codec = JSONCodec()
    for snap in snaps:
        conn.execute(
            "INSERT INTO machines VALUES (?, 'flow', 'flow', ?, ?, ?, ?, ?, ?)",
            (
                snap.machine_id,
                snap.status,
                snap.current_state.name,
                snap.version,
                codec.encode(snap.machine_id, snap.to_dict()),
                *V1_TIMES,
            ),
        )
        conn.execute(
            "INSERT INTO journal (machine_id, version, kind, at, data) VALUES (?, ?, ?, ?, ?)",
            (snap.machine_id, snap.version, "committed", "2025-01-01T00:00:00.000000+00:00", "{}"),
        )
    conn.close()


async def test_a_version_1_database_is_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    plain = await snapshot("plain", 4)
    busy = await snapshot("busy", 2, in_flight=IN_FLIGHT)
    done = await snapshot("done", 3, status="completed")
    _v1_database(path, [plain, busy, done])

    async with SQLiteStore(path) as store:
        for snap in (plain, busy, done):
            loaded = await store.load(snap.machine_id)
            assert loaded is not None and loaded.to_dict() == snap.to_dict()
            (entry,) = await store.journal(snap.machine_id)
            assert (entry.kind, entry.version) == ("committed", snap.version)
        infos = await store.list()
        assert [(i.machine_id, i.version, i.status) for i in infos] == [
            ("busy", 2, "active"),
            ("done", 3, "completed"),
            ("plain", 4, "active"),
        ]
        # busy was read from the stored JSON: the machine mid-transition is claimable
        assert [c.machine_id for c in await store.claim("w", limit=9, lease_ms=9_000)] == ["busy"]
        await store.save(await snapshot("plain", 5), expected_version=4)
        assert await store.send("plain", "GO") is True
        await store.start("flow", "fresh", {"a": 1})

    rows = column(path, "SELECT version, name FROM deploysm_schema ORDER BY version")
    assert rows == [(m.version, m.name) for m in migrations()] and rows[1] == (2, "runtime")
    cols = {r[1]: r for r in column(path, "PRAGMA table_info(machines)")}
    assert cols["snapshot"][3] == 0  # notnull: no more
    assert {"start_context", "busy", "cancel_requested", "lease_owner", "lease_expires_at"} <= set(
        cols
    )
    assert {"fencing_token", "wake_at"} <= set(cols)
    created = column(path, "SELECT created_at, updated_at FROM machines WHERE id = 'done'")
    assert created == [V1_TIMES]
    indexes = {r[0] for r in column(path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"machines_status", "machines_pending", "machines_wake", "inbox_undelivered"} <= indexes


# ------------------------------------------------------------------------- processes


def run_child(code: str, path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )


def race(code: str, path: Path, names: list[str]) -> list[Any]:
    """Start one child per name, wait until each has its store open, let them all go
    at once; their last output lines, as JSON."""
    children = [run_child(code, path, name) for name in names]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outs = [child.communicate(timeout=30) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    results = []
    for child, (out, err) in zip(children, outs, strict=True):
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


CHILD_CLAIMER = """
    import asyncio, json, sys
    from deploysm.stores._sqlite import SQLiteStore

    path, name = sys.argv[1], sys.argv[2]

    async def main():
        async with SQLiteStore(path) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            got = []
            while claims := await store.claim(name, limit=1, lease_ms=60_000):
                got += [[c.machine_id, c.token] for c in claims]
            print(json.dumps(got), flush=True)

    asyncio.run(main())
"""

CHILD_SENDER = """
    import asyncio, json, sys
    from deploysm.stores._sqlite import SQLiteStore

    path, name = sys.argv[1], sys.argv[2]

    async def main():
        async with SQLiteStore(path) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            sent = [await store.send("m", {"type": "GO", "payload": name}, event_id=f"e{i}")
                    for i in range(20)]
            print(json.dumps(sent), flush=True)

    asyncio.run(main())
"""


async def test_two_processes_never_claim_the_same_machine(tmp_path: Path) -> None:
    path = tmp_path / "claims.db"
    ids = [f"m{i:02d}" for i in range(40)]
    async with SQLiteStore(path) as store:
        await asyncio.gather(*(store.start("flow", mid, {"i": mid}) for mid in ids))
    a, b = await asyncio.to_thread(race, CHILD_CLAIMER, path, ["a", "b"])
    got_a, got_b = {m for m, _ in a}, {m for m, _ in b}
    assert len(got_a) == len(a) and len(got_b) == len(b)  # nobody got one twice
    assert got_a.isdisjoint(got_b)
    assert got_a | got_b == set(ids)
    assert all(token == 1 for _, token in a + b)
    owners = dict(column(path, "SELECT id, lease_owner FROM machines"))
    assert all(owners[m] == "a" for m in got_a) and all(owners[m] == "b" for m in got_b)


async def test_a_duplicate_event_id_from_two_processes_lands_once(tmp_path: Path) -> None:
    path = tmp_path / "sends.db"
    async with SQLiteStore(path) as store:
        await store.start("flow", "m", {})
    a, b = await asyncio.to_thread(race, CHILD_SENDER, path, ["a", "b"])
    assert [x + y for x, y in zip(a, b, strict=True)] == [1] * 20  # one True per id
    rows = column(path, "SELECT event_id, payload FROM inbox ORDER BY seq")
    assert sorted(e for e, _ in rows) == sorted(f"e{i}" for i in range(20))
    winners = {e: json.loads(p) for e, p in rows}
    for i, (x, _) in enumerate(zip(a, b, strict=True)):
        assert winners[f"e{i}"] == ("a" if x else "b")
