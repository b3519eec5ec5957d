"""A machine keeps its last ``history_limit`` states and visits; its totals stay exact,
and the full history stays readable from its store's journal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import deploysm
from deploysm import Event, SerializableState, StateMachineError
from deploysm.stores import MemoryStore, full_history

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
START = datetime(2026, 1, 1, tzinfo=UTC)  # the ping_pong fixture's clock


async def _run(sm: Any, hits: int) -> None:
    clock = sm.config.clock
    for i in range(hits):
        clock.advance(1.5)
        assert (await sm.dispatch(Event("HIT", payload={"i": i}))).success


async def test_a_machine_keeps_its_last_states_and_exact_totals(ping_pong: Any) -> None:
    small = deploysm.create_state_machine(ping_pong(history_limit=3), {}, machine_id="m")
    full = deploysm.create_state_machine(ping_pong(history_limit=1000), {}, machine_id="m")
    for sm in (small, full):
        await _run(sm, 25)
    assert len(full.get_history()) == 25
    assert small.get_history() == full.get_history()[-3:]
    s, f = small.get_metrics(), full.get_metrics()
    assert len(s.states) == 4 and len(f.states) == 26
    assert s.states == f.states[-4:]
    assert s.per_state == f.per_state
    assert s.per_state["ping"].visits == 13 and s.per_state["pong"].visits == 13
    assert s.per_state["ping"].duration_ms + s.per_state["pong"].duration_ms == 25 * 1500.0
    assert s.total_transitions == f.total_transitions == 25
    assert s.total_duration_ms == f.total_duration_ms == 25 * 1500.0
    assert s.started_at == START
    snap = (await small.serialize()).to_dict()
    assert snap["schema_version"] == 2
    assert len(snap["history"]) == 3 and len(snap["metrics"]["states"]) == 4


async def test_a_limit_of_zero_keeps_only_the_current_state(ping_pong: Any) -> None:
    sm = deploysm.create_state_machine(ping_pong(history_limit=0), {}, machine_id="m")
    await _run(sm, 4)
    assert sm.get_history() == []
    assert [v.state for v in sm.get_metrics().states] == ["ping"]
    assert sm.get_metrics().per_state["ping"].visits == 3


def test_the_default_limit_is_ten(ping_pong: Any) -> None:
    assert ping_pong().history_limit == 10


@pytest.mark.parametrize("bad", [-1, 1_000_001, "5", 2.0, True, None])
def test_history_limit_must_be_a_sane_int(bad: Any, ping_pong: Any) -> None:
    with pytest.raises(StateMachineError) as info:
        ping_pong(history_limit=bad)
    assert info.value.code == "INVALID_CONFIG"
    assert "history_limit" in str(info.value)


async def test_the_journal_keeps_the_full_history(ping_pong: Any) -> None:
    store = MemoryStore()
    sm = deploysm.create_state_machine(ping_pong(history_limit=2, store=store), {}, machine_id="m")
    reference = deploysm.create_state_machine(ping_pong(history_limit=1000), {}, machine_id="m")
    for m in (sm, reference):
        await _run(m, 12)
    assert len(sm.get_history()) == 2
    assert await full_history(store, "m") == reference.get_history()
    committed = [e for e in await store.journal("m") if e.kind == "committed"]
    assert len(committed) == 12  # one row per transition
    assert committed[0].data["exited"]["name"] == "ping"
    assert committed[-1].data["exited"]["data"]["payload"] == {"i": 10}


async def test_full_history_of_an_unknown_machine_is_a_typed_error() -> None:
    with pytest.raises(StateMachineError) as info:
        await full_history(MemoryStore(), "ghost")
    assert info.value.code == "UNKNOWN_MACHINE"


def _v1_long() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "snapshot_v1_long_history.json").read_text())
    return data


async def test_a_v1_snapshot_with_a_long_history_loads_into_a_small_limit_and_saves_v2(
    ping_pong: Any,
) -> None:
    v1 = _v1_long()
    assert v1["schema_version"] == 1 and len(v1["history"]) == 40
    store = MemoryStore()
    await store.save(SerializableState.from_dict(v1), expected_version=None)
    sm = deploysm.create_state_machine(
        ping_pong(history_limit=5, store=store), {}, machine_id="pp-1"
    )
    await sm.rehydrate(v1)
    assert sm.get_history() == SerializableState.from_dict(v1).history[-5:]
    await _run(sm, 1)
    saved = await store.load("pp-1")
    assert saved is not None
    out = saved.to_dict()
    assert out["schema_version"] == 2
    assert len(out["history"]) == 5 and len(out["metrics"]["states"]) == 6
    assert out["metrics"]["total_transitions"] == 41
    assert sum(t["visits"] for t in out["metrics"]["per_state"].values()) == 42
    assert out["metrics"]["started_at"] == v1["metrics"]["states"][0]["entered_at"]
    old = SerializableState.from_dict(v1)
    assert await full_history(store, "pp-1") == [*old.history, old.current_state]
    kinds = [e.kind for e in await store.journal("pp-1")]
    assert kinds.count("history") == 1  # v1's states, written with its first save
