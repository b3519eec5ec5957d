"""A worker rides out a failing store: it retries with capped, jittered backoff, keeps
every event in the inbox until what it did is durable, and stops (with a message
saying what to fix) only on an error that retrying cannot fix.

Sleeps are injected (``worker._sleep``): no real time passes. Failing writes come
from a store that raises the errors a real SQLite store raises (real ``sqlite3``
errors, wrapped the way ``SQLiteStore`` wraps them); the real disk-full case runs in
tests/integration/test_worker_disk_full.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_worker import Probe, kinds, start, tick, tick_payloads, worker_for

from deploysm import ErrorCode, StateMachineError, Worker
from deploysm.runtime._backoff import Backoff, unfixable
from deploysm.stores import MemoryStore
from deploysm.stores._sqlite_writer import store_error


def disk_io_error() -> StateMachineError:
    e = sqlite3.OperationalError("disk I/O error")
    e.sqlite_errorcode = 778  # SQLITE_IOERR_WRITE, what a full disk gives
    err = store_error(e)
    assert isinstance(err, StateMachineError)
    return err


def readonly_error(tmp_path: Path) -> StateMachineError:
    """A real SQLITE_READONLY: a write on a connection opened read-only."""
    path = tmp_path / "ro.db"
    sqlite3.connect(path).close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("CREATE TABLE t (x)")
    finally:
        conn.close()
    err = store_error(info.value)
    assert isinstance(err, StateMachineError)
    return err


class FailingStore(MemoryStore):
    """Claims fail ``claims`` times, then saves ``saves`` times, with ``error``."""

    def __init__(self, error: StateMachineError, claims: int = 0, saves: int = 0) -> None:
        super().__init__()
        self.error = error
        self.claims_left = claims
        self.saves_left = saves

    async def claim(self, *args: Any, **kw: Any) -> Any:
        if self.claims_left:
            self.claims_left -= 1
            raise self.error
        return await super().claim(*args, **kw)

    async def save(self, *args: Any, **kw: Any) -> None:
        if self.saves_left and not self.claims_left:
            self.saves_left -= 1
            raise self.error
        await super().save(*args, **kw)


class Sleeps:
    """An injected sleep: records each delay, lets the loop run, passes no time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def patient(store: Any, probe: Probe) -> tuple[Worker, Sleeps]:
    worker = worker_for(store, probe)
    sleeps = Sleeps()
    worker._sleep = sleeps
    worker._claim_backoff = Backoff(0.1, 1.0, rand=lambda: 1.0)
    worker._write_backoff = Backoff(0.1, 1.0, rand=lambda: 1.0)
    return worker, sleeps


async def run_until(worker: Worker, done: Any) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0)  # run() has started
        for _ in range(100_000):
            if await done() or task.done():
                break
            await asyncio.sleep(0)
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 5)


# ----------------------------------------------------------------------- backoff


def test_backoff_doubles_from_the_base_up_to_the_cap_and_resets() -> None:
    high = Backoff(0.1, 1.0, rand=lambda: 1.0)
    assert [round(high.next(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    high.reset()
    assert high.next() == pytest.approx(0.1)
    low = Backoff(0.1, 1.0, rand=lambda: 0.0)
    assert [round(low.next(), 6) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


@given(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=80))
def test_backoff_jitter_stays_in_the_upper_half_of_each_capped_step(draws: list[float]) -> None:
    it = iter(draws)
    backoff = Backoff(0.05, 7.0, rand=lambda: next(it))
    for n in range(len(draws)):
        step = min(7.0, 0.05 * 2**n)
        assert step / 2 <= backoff.next() <= step


# ------------------------------------------------------------- what retrying fixes


def test_what_retrying_cannot_fix(tmp_path: Path) -> None:
    assert unfixable(disk_io_error()) is None
    assert unfixable(StateMachineError("busy", ErrorCode.STORE_BUSY)) is None
    assert unfixable(StateMachineError("down", ErrorCode.STORE_UNAVAILABLE)) is None
    assert "read-only" in (unfixable(readonly_error(tmp_path)) or "")
    newer = StateMachineError("schema 9 is newer", ErrorCode.SCHEMA_TOO_NEW)
    assert "upgrade deploysm" in (unfixable(newer) or "")
    garbage = tmp_path / "not.db"
    garbage.write_bytes(b"this is not a database file at all" * 100)
    conn = sqlite3.connect(garbage)
    with pytest.raises(sqlite3.DatabaseError) as info:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    conn.close()
    assert "corrupt" in (unfixable(store_error(info.value)) or "")


# ------------------------------------------------------------------------ the worker


async def test_a_failing_claim_is_retried_with_growing_delays_and_nothing_is_lost() -> None:
    store = FailingStore(disk_io_error(), claims=5)
    probe = Probe()
    await start(store, "m1")
    await store.send("m1", tick(1))
    await store.send("m1", tick(2))
    worker, sleeps = patient(store, probe)

    async def done() -> bool:
        return await store.load("m1") is not None and await tick_payloads(store, "m1") == [1, 2]

    await run_until(worker, done)

    assert sleeps.delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert await tick_payloads(store, "m1") == [1, 2]
    assert probe.count("m1") == 2
    assert await store.next_event("m1") is None


async def test_a_failing_write_keeps_the_event_and_the_worker_backs_off() -> None:
    store = FailingStore(disk_io_error(), saves=3)
    probe = Probe()
    await start(store, "m1")
    await store.send("m1", tick(1))
    worker, sleeps = patient(store, probe)

    async def done() -> bool:
        return await store.load("m1") is not None and await tick_payloads(store, "m1") == [1]

    await run_until(worker, done)

    assert sleeps.delays[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert await tick_payloads(store, "m1") == [1]  # applied once, delivered once
    assert probe.count("m1") == 1  # the effect never ran without a durable intent
    assert "event_refused" not in await kinds(store, "m1")
    assert await store.next_event("m1") is None


async def test_an_error_retrying_cannot_fix_stops_the_worker_with_what_to_fix(
    tmp_path: Path,
) -> None:
    store = FailingStore(readonly_error(tmp_path), claims=1)
    worker, sleeps = patient(store, Probe())

    with pytest.raises(StateMachineError) as info:
        await asyncio.wait_for(worker.run(), 5)

    assert info.value.code == ErrorCode.PERSISTENCE_ERROR
    assert "retrying cannot fix this" in info.value.message
    assert "read-only" in info.value.message and "readonly" in info.value.message
    assert sleeps.delays == []


async def test_stop_cuts_a_backoff_pause_short() -> None:
    store = FailingStore(disk_io_error(), claims=1_000_000)
    worker = worker_for(store, Probe())
    worker._claim_backoff = Backoff(3600.0, 3600.0)  # the real sleep: an hour
    task = asyncio.create_task(worker.run())
    for _ in range(1000):
        if store.claims_left < 1_000_000:
            break
        await asyncio.sleep(0)
    assert store.claims_left == 1_000_000 - 1  # it failed once and now waits
    await worker.stop()
    await asyncio.wait_for(task, 5)
