"""Parking: a machine whose stored snapshot cannot be read (garbage bytes, a key that is
not in the keyring) must not stop the claims of the others, on every runtime store.

A claim that meets such a row parks it (status ``needs_attention`` in the store's row,
the reason in its journal, the snapshot bytes untouched) and claims the rest;
``unpark`` puts it back once its snapshot reads again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import postgres_kind
import pytest

from deploysm import ErrorCode, SerializableState, StateMachineError
from deploysm.stores import Codec, EncryptedCodec, MemoryStore, SQLiteStore

MakeSnapshot = Callable[..., Awaitable[SerializableState]]
LEASE = 5_000  # ms: no lease expires during a test
MakeStore = Callable[..., Awaitable[Any]]

K1, K2 = os.urandom(32), os.urandom(32)


def _make(kind: str, tmp: Path, codec: Codec | None) -> Any:
    if kind == "memory":
        return MemoryStore(codec=codec)
    if kind == "sqlite":
        return SQLiteStore(tmp / "park.db", codec=codec)
    return postgres_kind.make(tmp, codec=codec)


async def _tamper(store: Any, machine_id: str, blob: bytes) -> None:
    if isinstance(store, MemoryStore):
        store._rows[machine_id].blob = blob
    elif isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path, timeout=5) as raw:
            raw.execute("UPDATE machines SET snapshot = ? WHERE id = ?", (blob, machine_id))
        raw.close()
    else:
        await postgres_kind.tamper(store, machine_id, blob)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    opened: list[Any] = []

    async def make(codec: Codec | None = None) -> Any:
        assert not opened, "one store per test"
        store = _make(request.param, tmp_path, codec)
        await store.open()
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()


async def _with_event(rt: Any, make_snapshot: MakeSnapshot, mid: str) -> None:
    await rt.save(await make_snapshot(mid, version=1), expected_version=None, workflow="wf")
    await rt.send(mid, "START", event_id=f"{mid}-1")


async def _status(rt: Any, mid: str) -> str:
    (info,) = [i for i in await rt.list() if i.machine_id == mid]
    status: str = info.status
    return status


async def test_garbage_snapshot_is_parked_and_the_others_are_claimed(
    make_store: MakeStore, make_snapshot: MakeSnapshot
) -> None:
    rt = await make_store()
    for mid in ("a", "b", "c"):
        await _with_event(rt, make_snapshot, mid)
    await _tamper(rt, "b", b"\x00garbage\xff")

    claims = await rt.claim("w1", limit=10, lease_ms=LEASE)

    assert [c.machine_id for c in claims] == ["a", "c"]
    assert await _status(rt, "b") == "needs_attention"
    assert [i.machine_id for i in await rt.list("needs_attention")] == ["b"]
    last = (await rt.journal("b"))[-1]
    assert last.kind == "unreadable"
    assert last.data["code"] == ErrorCode.INVALID_SNAPSHOT
    assert "'b'" in last.data["message"]
    with pytest.raises(StateMachineError) as e:  # the bytes are left as they were
        await rt.load("b")
    assert e.value.code == ErrorCode.INVALID_SNAPSHOT
    # parked: later claims (by anyone) pass it by, its event stays undelivered
    assert await rt.claim("w2", limit=10, lease_ms=LEASE) == []
    item = await rt.next_event("b")
    assert item is not None and item.event_id == "b-1"


async def test_snapshot_under_a_key_not_in_the_keyring_is_parked_then_unparked(
    make_store: MakeStore, make_snapshot: MakeSnapshot
) -> None:
    rt = await make_store(EncryptedCodec({"k1": K1, "k2": K2}, "k1"))
    await _with_event(rt, make_snapshot, "a")
    rt.codec = EncryptedCodec({"k1": K1, "k2": K2}, "k2")
    await _with_event(rt, make_snapshot, "b")  # written under k2
    rt.codec = EncryptedCodec({"k1": K1}, "k1")  # a keyring that lost k2

    assert [c.machine_id for c in await rt.claim("w1", limit=10, lease_ms=LEASE)] == ["a"]
    assert await _status(rt, "b") == "needs_attention"
    assert "k2" in (await rt.journal("b"))[-1].data["message"]

    with pytest.raises(StateMachineError) as e:  # still unreadable: stays parked
        await rt.unpark("b")
    assert e.value.code == ErrorCode.INVALID_SNAPSHOT
    assert await _status(rt, "b") == "needs_attention"

    rt.codec = EncryptedCodec({"k1": K1, "k2": K2}, "k1")  # the keyring is fixed
    snap = await rt.unpark("b")
    assert snap.machine_id == "b" and snap.status == "active"
    assert await _status(rt, "b") == "active"
    assert [e.kind for e in await rt.journal("b")][-2:] == ["unreadable", "unparked"]
    (claim,) = await rt.claim("w1", limit=10, lease_ms=LEASE)
    assert claim.machine_id == "b" and claim.snapshot == snap


async def test_unpark_refuses_what_is_not_parked_by_a_claim(
    make_store: MakeStore, make_snapshot: MakeSnapshot
) -> None:
    rt = await make_store()
    await rt.save(await make_snapshot("ok", version=1), expected_version=None, workflow="wf")
    parked = await make_snapshot("op", version=1, status="needs_attention")
    await rt.save(parked, expected_version=None, workflow="wf")  # the engine parked it
    for mid, code in (("ok", ErrorCode.NOT_PARKED), ("op", ErrorCode.NOT_PARKED)):
        with pytest.raises(StateMachineError) as e:
            await rt.unpark(mid)
        assert e.value.code == code
    with pytest.raises(StateMachineError) as e:
        await rt.unpark("nobody")
    assert e.value.code == ErrorCode.UNKNOWN_MACHINE
    assert await _status(rt, "ok") == "active"
    assert await _status(rt, "op") == "needs_attention"


async def test_never_run_machine_whose_start_context_cannot_be_read_is_parked(
    make_store: MakeStore,
) -> None:
    rt = await make_store(EncryptedCodec({"k1": K1, "k2": K2}, "k2"))
    await rt.start("wf", "fresh", {"secret": "s3"})  # its start context sealed under k2
    await rt.start("wf", "other", {"n": 1})
    rt.codec = EncryptedCodec({"k1": K1}, "k1")  # a keyring that lost k2
    claims = await rt.claim("w1", limit=10, lease_ms=LEASE)
    if isinstance(rt, MemoryStore):  # holds start contexts as objects: nothing to decode
        assert sorted(c.machine_id for c in claims) == ["fresh", "other"]
        return
    assert [c.machine_id for c in claims] == []  # both were sealed under k2
    assert await _status(rt, "fresh") == "needs_attention"
    assert (await rt.journal("fresh"))[-1].kind == "unreadable"
    with pytest.raises(StateMachineError) as e:  # still unreadable: stays parked
        await rt.unpark("fresh")
    assert e.value.code == ErrorCode.INVALID_SNAPSHOT

    rt.codec = EncryptedCodec({"k1": K1, "k2": K2}, "k1")  # the keyring is fixed
    assert await rt.unpark("fresh") is None  # never run: no snapshot yet
    assert await _status(rt, "fresh") == "active"
    (claim,) = await rt.claim("w1", limit=10, lease_ms=LEASE)
    assert claim.machine_id == "fresh" and claim.snapshot is None
    assert claim.context == {"secret": "s3"}


async def test_a_worker_parks_a_machine_it_holds_but_cannot_run(
    make_store: MakeStore, make_snapshot: MakeSnapshot
) -> None:
    rt = await make_store()
    await _with_event(rt, make_snapshot, "a")
    await rt.start("wf", "fresh", {"n": 1})  # never run: parked before its first snapshot
    claims = {c.machine_id: c for c in await rt.claim("w1", limit=10, lease_ms=LEASE)}
    assert sorted(claims) == ["a", "fresh"]
    why = StateMachineError("snapshot context is invalid: not an object", "INVALID_SNAPSHOT")

    for mid, claim in claims.items():
        assert await rt.park(mid, claim.token + 1, why) is False  # not this lease's token
        assert await _status(rt, mid) == "active"
        assert await rt.park(mid, claim.token, why) is True
        assert await _status(rt, mid) == "needs_attention"
        last = (await rt.journal(mid))[-1]
        assert last.kind == "unrunnable"
        assert last.data == {"code": "INVALID_SNAPSHOT", "message": why.message}
    assert (await rt.load("a")) is not None  # the snapshot stays as it was
    # parked: no claim takes it, and the lease is free (no expiry to wait for)
    assert await rt.claim("w2", limit=10, lease_ms=LEASE) == []
    item = await rt.next_event("a")
    assert item is not None and item.event_id == "a-1"

    snap = await rt.unpark("a")  # fixed (e.g. the workflow is right again): back it goes
    assert snap is not None and snap.status == "active"
    assert await rt.unpark("fresh") is None
    taken = await rt.claim("w2", limit=10, lease_ms=LEASE)
    assert sorted(c.machine_id for c in taken) == ["a", "fresh"]


async def _last_error(rt: Any, mid: str) -> str | None:
    (info,) = [i for i in await rt.list() if i.machine_id == mid]
    error: str | None = info.last_error
    return error


async def test_a_parked_machine_lists_why_and_unpark_restores_its_own_last_error(
    make_store: MakeStore, make_snapshot: MakeSnapshot
) -> None:
    rt = await make_store()
    await _with_event(rt, make_snapshot, "held")
    await _with_event(rt, make_snapshot, "bad")
    await _tamper(rt, "bad", b"\x00garbage\xff")
    (claim,) = await rt.claim("w1", limit=10, lease_ms=LEASE)  # parks "bad"
    assert (await _last_error(rt, "bad") or "").startswith("INVALID_SNAPSHOT: ")
    why = StateMachineError("the workflow's factory raised: boom", "CANNOT_RUN")
    assert await rt.park("held", claim.token, why) is True
    assert await _last_error(rt, "held") == f"CANNOT_RUN: {why.message}"

    snap = await rt.unpark("held")  # back to what its own snapshot says
    assert snap is not None and snap.last_error is None
    assert await _last_error(rt, "held") is None
