"""The ``Store`` contract: one suite, run on every store (see ``conftest.STORE_KINDS``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from deploysm import ErrorCode, SerializableState, StateMachineError
from deploysm.stores import JournalRecord, Store

# the fixtures' types (see conftest.py)
MakeSnapshot = Callable[..., Awaitable[SerializableState]]
Tamper = Callable[[str, bytes], Awaitable[None]]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def rec(kind: str, minute: int = 0, **data: object) -> JournalRecord:
    return JournalRecord(kind, T0 + timedelta(minutes=minute), data)


async def test_store_satisfies_protocol(store: Store) -> None:
    assert isinstance(store, Store)


async def test_save_new_then_load_round_trips(store: Store, make_snapshot: MakeSnapshot) -> None:
    snap = await make_snapshot("m-1", version=1, steps=2)
    await store.save(snap, expected_version=None)
    loaded = await store.load("m-1")
    assert loaded is not None
    assert loaded is not snap
    assert loaded.to_dict() == snap.to_dict()
    assert loaded.current_state.name == "deploying"


async def test_load_missing_is_none(store: Store) -> None:
    assert await store.load("nope") is None
    assert await store.journal("nope") == []


async def test_update_with_matching_version(store: Store, make_snapshot: MakeSnapshot) -> None:
    await store.save(await make_snapshot("m", version=1), expected_version=None)
    newer = await make_snapshot("m", version=2, steps=1)
    await store.save(newer, expected_version=1)
    loaded = await store.load("m")
    assert loaded is not None and loaded.to_dict() == newer.to_dict()


async def test_stale_version_conflicts_and_writes_nothing(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    v1 = await make_snapshot("m", version=1)
    v2 = await make_snapshot("m", version=2, steps=1)
    await store.save(v1, expected_version=None, journal=[rec("created")], workflow="wf")
    await store.save(v2, expected_version=1, journal=[rec("step", 1)])
    before_journal = await store.journal("m")
    before_list = await store.list()

    stale = await make_snapshot("m", version=2, steps=2, status="failed")
    with pytest.raises(StateMachineError) as info:
        await store.save(stale, expected_version=1, journal=[rec("lost", 2)], workflow="other")
    assert info.value.code == ErrorCode.CONFLICT
    assert "expected version 1, found 2" in info.value.message

    loaded = await store.load("m")
    assert loaded is not None and loaded.to_dict() == v2.to_dict()
    assert await store.journal("m") == before_journal
    assert await store.list() == before_list
    assert await store.list(status="failed") == []


async def test_insert_twice_conflicts(store: Store, make_snapshot: MakeSnapshot) -> None:
    first = await make_snapshot("m", version=1)
    await store.save(first, expected_version=None, journal=[rec("created")])
    again = await make_snapshot("m", version=1, steps=1)
    with pytest.raises(StateMachineError) as info:
        await store.save(again, expected_version=None, journal=[rec("again")])
    assert info.value.code == ErrorCode.CONFLICT
    assert "already exists" in info.value.message
    loaded = await store.load("m")
    assert loaded is not None and loaded.to_dict() == first.to_dict()
    assert [e.kind for e in await store.journal("m")] == ["created"]


async def test_update_of_missing_machine_conflicts(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    with pytest.raises(StateMachineError) as info:
        await store.save(await make_snapshot("ghost", version=4), expected_version=3)
    assert info.value.code == ErrorCode.CONFLICT
    assert "does not exist" in info.value.message
    assert await store.load("ghost") is None
    assert await store.list() == []
    assert await store.journal("ghost") == []


async def test_journal_order_after_and_versions(store: Store, make_snapshot: MakeSnapshot) -> None:
    await store.save(
        await make_snapshot("a", version=1),
        expected_version=None,
        journal=[rec("created", 0, n=1), rec("intent", 1, to="validating", nested={"k": [1, 2]})],
    )
    await store.save(await make_snapshot("b", version=1), expected_version=None, journal=[rec("b")])
    await store.save(
        await make_snapshot("a", version=2, steps=1), expected_version=1, journal=[rec("commit", 2)]
    )
    await store.save(await make_snapshot("a", version=3, steps=1), expected_version=2)

    entries = await store.journal("a")
    assert [e.kind for e in entries] == ["created", "intent", "commit"]
    assert [e.version for e in entries] == [1, 1, 2]
    assert all(e.machine_id == "a" for e in entries)
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 1
    assert entries[0].at == T0 and entries[2].at == T0 + timedelta(minutes=2)
    assert entries[0].at.utcoffset() == timedelta(0)
    assert dict(entries[1].data) == {"to": "validating", "nested": {"k": [1, 2]}}

    assert await store.journal("a", after=seqs[0]) == entries[1:]
    assert await store.journal("a", after=seqs[-1]) == []
    assert [e.kind for e in await store.journal("b")] == ["b"]


async def test_journal_of_conflicting_save_not_written(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    await store.save(await make_snapshot("m", version=5), expected_version=None)
    for expected in (None, 4, 6):
        with pytest.raises(StateMachineError) as info:
            await store.save(
                await make_snapshot("m", version=6),
                expected_version=expected,
                journal=[rec("ghost"), rec("ghost2")],
            )
        assert info.value.code == ErrorCode.CONFLICT
    assert await store.journal("m") == []


async def test_list_all_and_by_status_ordered(store: Store, make_snapshot: MakeSnapshot) -> None:
    t_before = datetime.now(UTC) - timedelta(seconds=1)
    specs = [("c", 3, "active", 1), ("a", 1, "completed", 3), ("b", 2, "failed", 2)]
    specs += [("a2", 7, "active", 0)]
    for mid, version, status, steps in specs:
        snap = await make_snapshot(mid, version=version, status=status, steps=steps)
        await store.save(snap, expected_version=None, workflow=f"wf-{mid}")

    infos = await store.list()
    assert [i.machine_id for i in infos] == ["a", "a2", "b", "c"]
    by_id = {i.machine_id: i for i in infos}
    assert by_id["a"].status == "completed" and by_id["a"].state == "completed"
    assert by_id["b"].state == "deploying" and by_id["b"].version == 2
    assert by_id["c"].state == "validating" and by_id["a2"].state == "idle"
    assert all(i.definition_id == "deployment-workflow" for i in infos)
    assert all(i.workflow == f"wf-{i.machine_id}" for i in infos)
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert all(t_before <= i.updated_at <= now for i in infos)

    assert [i.machine_id for i in await store.list(status="active")] == ["a2", "c"]
    assert [i.machine_id for i in await store.list("failed")] == ["b"]
    assert await store.list(status="cancelled") == []


async def test_status_change_moves_machine_between_lists(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    await store.save(await make_snapshot("m", version=1), expected_version=None)
    first = (await store.list())[0]
    await store.save(await make_snapshot("m", version=2, status="cancelled"), expected_version=1)
    assert await store.list(status="active") == []
    (info,) = await store.list(status="cancelled")
    assert info.version == 2 and info.updated_at >= first.updated_at


async def test_workflow_kept_when_none(store: Store, make_snapshot: MakeSnapshot) -> None:
    await store.save(await make_snapshot("m", version=1), expected_version=None, workflow="deploy")
    await store.save(await make_snapshot("m", version=2), expected_version=1)
    assert (await store.list())[0].workflow == "deploy"
    await store.save(await make_snapshot("m", version=3), expected_version=2, workflow="rollout")
    assert (await store.list())[0].workflow == "rollout"
    await store.save(await make_snapshot("n", version=1), expected_version=None)
    assert (await store.list())[1].workflow is None


async def test_concurrent_saves_same_version_exactly_one_wins(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    await store.save(await make_snapshot("m", version=1), expected_version=None)
    a = await make_snapshot("m", version=2, steps=1)
    b = await make_snapshot("m", version=2, steps=1, status="failed")
    results = await asyncio.gather(
        store.save(a, expected_version=1, journal=[rec("a")]),
        store.save(b, expected_version=1, journal=[rec("b")]),
        return_exceptions=True,
    )
    errors = [r for r in results if r is not None]
    assert len(errors) == 1
    assert isinstance(errors[0], StateMachineError) and errors[0].code == ErrorCode.CONFLICT
    winner = a if results[0] is None else b
    loaded = await store.load("m")
    assert loaded is not None and loaded.to_dict() == winner.to_dict()
    assert [e.kind for e in await store.journal("m")] == ["a" if winner is a else "b"]


async def test_concurrent_inserts_of_one_id_exactly_one_wins(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    snaps = [await make_snapshot("m", version=1, steps=i % 3) for i in range(5)]
    results = await asyncio.gather(
        *(store.save(s, expected_version=None) for s in snaps), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, StateMachineError) and r.code == "CONFLICT" for r in results if r)


async def test_hundred_machines_saved_concurrently_all_land(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    template = await make_snapshot("tmpl", version=1, steps=1)
    snaps = [_renamed(template, f"m{i:03d}", i + 1) for i in range(100)]
    await asyncio.gather(
        *(
            store.save(s, expected_version=None, journal=[rec("created", n=i)])
            for i, s in enumerate(snaps)
        )
    )
    infos = await store.list()
    assert [i.machine_id for i in infos] == [f"m{i:03d}" for i in range(100)]
    assert [i.version for i in infos] == list(range(1, 101))
    for i in (0, 42, 99):
        loaded = await store.load(f"m{i:03d}")
        assert loaded is not None and loaded.to_dict() == snaps[i].to_dict()
        assert [dict(e.data) for e in await store.journal(f"m{i:03d}")] == [{"n": i}]


async def test_mixed_concurrent_batch_only_stale_saves_conflict(
    store: Store, make_snapshot: MakeSnapshot
) -> None:
    template = await make_snapshot("tmpl", version=1)
    for i in range(10):
        await store.save(_renamed(template, f"m{i}", 1), expected_version=None)
    # even machines: right expected version; odd ones: stale
    results = await asyncio.gather(
        *(
            store.save(
                _renamed(template, f"m{i}", 2),
                expected_version=1 if i % 2 == 0 else 0,
                journal=[rec("step", n=i)],
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    for i, r in enumerate(results):
        if i % 2 == 0:
            assert r is None
        else:
            assert isinstance(r, StateMachineError) and r.code == ErrorCode.CONFLICT
    infos = await store.list()
    assert [i.version for i in infos] == [2 if n % 2 == 0 else 1 for n in range(10)]
    assert [len(await store.journal(f"m{i}")) for i in range(10)] == [1, 0] * 5


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00garbage",
        b"[1, 2, 3]",
        b'{"schema_version": 1, "machine_id": "m"}',
        json.dumps({"schema_version": 999}).encode(),
    ],
    ids=["not-json", "not-object", "truncated", "wrong-version"],
)
async def test_tampered_row_is_invalid_snapshot(
    store: Store, make_snapshot: MakeSnapshot, tamper: Tamper, blob: bytes
) -> None:
    await store.save(await make_snapshot("m", version=1), expected_version=None)
    await tamper("m", blob)
    with pytest.raises(StateMachineError) as info:
        await store.load("m")
    assert info.value.code == ErrorCode.INVALID_SNAPSHOT
    assert (await store.list())[0].version == 1  # listing does not decode snapshots


async def test_tampered_field_is_invalid_snapshot(
    store: Store, make_snapshot: MakeSnapshot, tamper: Tamper
) -> None:
    snap = await make_snapshot("m", version=1)
    await store.save(snap, expected_version=None)
    data = snap.to_dict()
    data["version"] = -3
    await tamper("m", json.dumps(data).encode())
    with pytest.raises(StateMachineError) as info:
        await store.load("m")
    assert info.value.code == ErrorCode.INVALID_SNAPSHOT


def _renamed(snap: SerializableState, machine_id: str, version: int) -> SerializableState:
    return dataclasses.replace(snap, machine_id=machine_id, version=version)
