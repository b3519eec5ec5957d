"""Snapshot formats are frozen: the v1 fixtures written by the previous release must
load, resume, and save as v2 with nothing lost (v2 only adds fields: ``per_state`` and
``started_at`` in ``metrics``, both derived from v1's full list of visits)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import deploysm
from deploysm import SerializableState, StateMachineError
from deploysm.examples.simple import new_simple_context, simple_config
from deploysm.stores import MemoryStore
from deploysm.testing import VirtualClock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V1_KEYS = {
    "schema_version",
    "machine_id",
    "definition_id",
    "fingerprint",
    "status",
    "version",
    "current_state",
    "context",
    "history",
    "metrics",
    "in_flight",
    "committed_effects",
    "last_error",
    "state_deadline",
}


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def _as_v1(v2: dict[str, Any]) -> dict[str, Any]:
    """A v2 document without what v2 added."""
    out = json.loads(json.dumps(v2))
    assert out["schema_version"] == 2
    out["schema_version"] = 1
    assert set(out["metrics"]) - set(_fixture("snapshot_v1.json")["metrics"]) == {
        "per_state",
        "started_at",
    }
    del out["metrics"]["per_state"], out["metrics"]["started_at"]
    return out


@pytest.mark.parametrize("name", ["snapshot_v1.json", "snapshot_v1_in_flight.json"])
def test_v1_fixture_loads_and_round_trips(name: str) -> None:
    data = _fixture(name)
    assert set(data) == V1_KEYS
    assert data["schema_version"] == 1
    snap = SerializableState.from_dict(data)
    v2 = snap.to_dict()
    assert _as_v1(v2) == data
    assert json.loads(snap.to_json()) == v2
    assert SerializableState.from_dict(v2).to_dict() == v2
    visits = data["metrics"]["states"]
    assert v2["metrics"]["started_at"] == visits[0]["entered_at"]
    assert set(v2["metrics"]["per_state"]) == {v["state"] for v in visits}
    assert sum(t["visits"] for t in v2["metrics"]["per_state"].values()) == len(visits)


async def test_v1_fixture_rehydrates_into_the_definition_that_wrote_it() -> None:
    cfg = simple_config(clock=VirtualClock(), random=random.Random(42))
    sm = deploysm.create_state_machine(cfg, new_simple_context(), machine_id="deploy-123")
    await sm.rehydrate(_fixture("snapshot_v1.json"))
    assert sm.get_state().name == "deploying"
    assert [s.name for s in sm.get_history()] == ["idle", "validating"]
    assert sm.get_state().data["event"] == "VALIDATED"
    assert sm.get_history()[1].data["payload"] == {"requested_by": "alice"}
    assert _as_v1((await sm.serialize()).to_dict()) == _fixture("snapshot_v1.json")


async def test_v1_in_flight_fixture_resumes_with_its_idempotency_key() -> None:
    data = _fixture("snapshot_v1_in_flight.json")
    store = MemoryStore()
    await store.save(SerializableState.from_dict(data), expected_version=None)
    keys: list[str | None] = []
    cfg = simple_config(clock=VirtualClock(), random=random.Random(0))
    cfg.store = store
    sm = deploysm.create_state_machine(cfg, new_simple_context(), machine_id="deploy-123")
    result = await sm.resume()
    assert result is not None and result.success
    keys.append(sm.get_state().idempotency_key)
    assert keys == [data["in_flight"]["idempotency_key"]]
    assert sm.get_state().name == "deploying"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(schema_version=3), "schema_version"),
        (lambda d: d.update(schema_version=2), "per_state"),
        (lambda d: d.update(fingerprint="0" * 32), "changed"),
        (lambda d: d.update(definition_id="other"), "definition"),
        (lambda d: d.pop("metrics"), "metrics"),
    ],
)
async def test_a_different_format_or_definition_is_refused(change: Any, where: str) -> None:
    data = _fixture("snapshot_v1.json")
    change(data)
    cfg = simple_config(clock=VirtualClock(), random=random.Random(42))
    sm = deploysm.create_state_machine(cfg, new_simple_context(), machine_id="deploy-123")
    before = (await sm.serialize()).to_dict()
    with pytest.raises(StateMachineError) as info:
        await sm.rehydrate(data)
    assert info.value.code == "INVALID_SNAPSHOT"
    assert where in str(info.value)
    assert (await sm.serialize()).to_dict() == before
