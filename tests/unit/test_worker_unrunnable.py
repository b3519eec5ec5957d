"""A machine the worker cannot run (its stored context does not fit the workflow, the
workflow's factory raises) is parked with its error recorded and its lease given back,
never claimed and failed again at every lease expiry; the other machines run on."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from deploysm import State, StateMachineConfig, Transition, Worker, effect
from deploysm.stores import MemoryStore, SQLiteStore

STORES: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite": lambda tmp: SQLiteStore(tmp / "w.db"),
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    s = STORES[request.param](tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def pipeline() -> StateMachineConfig[str, str, Any]:
    def step(ctx: Any, state: State[str]) -> None:
        return None

    eff = effect().execute(step).set_idempotent(True).build()
    return StateMachineConfig(
        id="pipeline",
        initial_state="a",
        states=["a", "b", "c"],
        events=["NEXT"],
        transitions=[Transition("a", "b", "NEXT"), Transition("b", "c", "NEXT")],
        effects={"b": eff, "c": eff},
    )


def overwrite_start_context(store: Any, mid: str, context: Any) -> None:
    if isinstance(store, MemoryStore):
        store._rows[mid].context = context
        return
    with sqlite3.connect(store.path) as raw:
        sql = "UPDATE machines SET start_context = ? WHERE id = ?"
        raw.execute(sql, (json.dumps(context), mid))
    raw.close()


async def status_of(store: Any, mid: str) -> str:
    (info,) = [i for i in await store.list() if i.machine_id == mid]
    status: str = info.status
    return status


async def test_a_stored_context_that_is_not_an_object_parks_the_machine(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for mid in ("bad", "good"):
        await store.start("pipeline", mid, {})
        await store.send(mid, "NEXT")
    # start() refuses a context that is not an object; an older release or a hand
    # edit may still have stored one
    overwrite_start_context(store, "bad", "just a string")
    await Worker(store, {"pipeline": pipeline}).run_until_idle()  # a first snapshot each
    for mid in ("bad", "good"):
        await store.send(mid, "NEXT")

    worker = Worker(store, {"pipeline": pipeline}, worker_id="w1")
    with caplog.at_level(logging.ERROR, logger="deploysm"):
        await worker.run_until_idle()

    assert await status_of(store, "good") == "completed"
    assert await status_of(store, "bad") == "needs_attention"
    last = (await store.journal("bad"))[-1]
    assert last.kind == "unrunnable"
    assert last.data["code"] == "INVALID_SNAPSHOT"
    assert "context" in last.data["message"]
    assert "parked (needs_attention): the worker cannot run it" in caplog.text
    (record,) = [r for r in caplog.records if r.name == "deploysm.worker"]
    assert getattr(record, "machine_id", None) == "bad"
    # the lease went back with it, and nothing claims it again
    assert await store.claim("w2", limit=10, lease_ms=60_000) == []
    assert await Worker(store, {"pipeline": pipeline}).run_until_idle() == 0


async def test_a_workflow_factory_that_raises_parks_its_machines(store: Any) -> None:
    def broken() -> StateMachineConfig[str, str, Any]:
        raise RuntimeError("no config today")

    await store.start("pipeline", "m1", {})
    await Worker(store, {"pipeline": broken}).run_until_idle()

    assert await status_of(store, "m1") == "needs_attention"
    last = (await store.journal("m1"))[-1]
    assert last.kind == "unrunnable"
    assert last.data == {"code": "CANNOT_RUN", "message": "RuntimeError: no config today"}

    await store.unpark("m1")  # fixed: the right factory runs it
    assert await Worker(store, {"pipeline": pipeline}).run_until_idle() == 1
    assert await status_of(store, "m1") == "active"
    assert [e.kind for e in await store.journal("m1")][-2:] == ["unparked", "started"]
