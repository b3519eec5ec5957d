"""The full history of a machine that keeps only its recent states is readable from
every store (``stores.full_history``), and a version-1 snapshot stored by the previous
release resumes, keeps its states and saves as version 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import deploysm
from deploysm import Event, SerializableState
from deploysm.stores import Store, full_history

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "snapshot_v1_long_history.json"


async def _hits(sm: Any, count: int) -> None:
    for i in range(count):
        assert (await sm.dispatch(Event("HIT", payload={"i": i}))).success


async def test_full_history_reads_every_state_a_machine_left(store: Store, ping_pong: Any) -> None:
    sm = deploysm.create_state_machine(ping_pong(store=store, history_limit=3), {}, "m")
    keeps_all = deploysm.create_state_machine(ping_pong(history_limit=100), {}, "m")
    for machine in (sm, keeps_all):
        await _hits(machine, 15)
    assert len(sm.get_history()) == 3
    stored = await store.load("m")
    assert stored is not None and len(stored.history) == 3
    assert await full_history(store, "m") == keeps_all.get_history()
    kinds = [e.kind for e in await store.journal("m")]
    assert kinds.count("committed") == 15


async def test_a_stored_v1_snapshot_resumes_and_saves_v2_keeping_its_states(
    store: Store, tamper: Any, ping_pong: Any
) -> None:
    text = V1.read_bytes()
    v1 = json.loads(text)
    old = SerializableState.from_dict(v1)
    await store.save(old, expected_version=None)
    await tamper("pp-1", text)  # the row now holds the previous release's bytes
    sm = deploysm.create_state_machine(
        ping_pong(store=store, history_limit=4), {}, machine_id="pp-1"
    )
    await sm.resume()
    assert sm.get_history() == old.history[-4:]
    await _hits(sm, 2)
    saved = await store.load("pp-1")
    assert saved is not None
    out = saved.to_dict()
    assert out["schema_version"] == 2 and len(out["history"]) == 4
    assert out["metrics"]["total_transitions"] == 42
    assert len(out["metrics"]["states"]) == 5
    everything = await full_history(store, "pp-1")
    assert everything[:40] == old.history
    assert everything[40] == old.current_state
    assert [s.name for s in everything] == ["ping", "pong"] * 21
