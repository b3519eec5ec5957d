"""Snapshots: serialize/rehydrate round trips, JSON safety, and strict validation."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from deploysm import (
    ErrorCode,
    Event,
    SerializableState,
    StateMachineError,
    create_state_machine,
    effect,
)


@dataclass
class Target:
    region: str
    replicas: int


@dataclass
class FlatCtx:
    deployment_id: int
    logs: list[str] = field(default_factory=list)


@dataclass
class NestedCtx:
    deployment_id: int
    target: Target
    logs: list[str] = field(default_factory=list)


class PydTarget(BaseModel):
    region: str
    replicas: int


class PydCtx(BaseModel):
    deployment_id: int
    started_at: datetime
    target: PydTarget
    logs: list[str] = []


def _log(ctx: Any, line: str) -> None:
    logs = ctx["logs"] if isinstance(ctx, dict) else ctx.logs
    logs.append(line)


def _config(make_config: Any, rollbacks: list[str] | None = None) -> Any:
    """Effects that mutate the context; ``deploying`` is undoable (a committed effect)."""
    undo = rollbacks if rollbacks is not None else []
    validate = effect().execute(lambda c, s: _log(c, "validated")).set_idempotent(True).build()
    deploy = (
        effect()
        .execute(lambda c, s: _log(c, "deployed"))
        .rollback(lambda c, s: undo.append(s.name))
        .build()
    )
    return make_config(effects={"validating": validate, "deploying": deploy})


CONTEXTS: dict[str, Callable[[], Any]] = {
    "dict": lambda: {"deployment_id": 123, "logs": [], "meta": {"sha": "abc", "n": 1.5}},
    "dataclass": lambda: FlatCtx(123),
    "nested-dataclass": lambda: NestedCtx(123, Target("eu-west-1", 3)),
    "pydantic": lambda: PydCtx(
        deployment_id=123,
        started_at=datetime(2025, 1, 1, 12, tzinfo=UTC),
        target=PydTarget(region="eu-west-1", replicas=3),
    ),
}


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["object", "dict", "json"])
@pytest.mark.parametrize("kind", list(CONTEXTS))
async def test_round_trip_restores_the_machine_and_its_context_type(
    make_config: Any, kind: str, form: str
) -> None:
    cfg = _config(make_config)
    ctx = CONTEXTS[kind]()
    sm = create_state_machine(cfg, ctx)
    assert sm.get_context() is ctx  # the machine holds the very object it was given
    await sm.dispatch(Event("START", payload={"sha": "abc"}))
    await sm.dispatch("VALIDATED")
    snap = await sm.serialize()
    given = {"object": snap, "dict": snap.to_dict(), "json": snap.to_json()}[form]

    fresh = create_state_machine(cfg, CONTEXTS[kind]())
    await fresh.rehydrate(given)
    restored = fresh.get_context()
    assert type(restored) is type(ctx)
    assert restored == ctx and restored is not ctx
    assert fresh.get_state() == sm.get_state()
    assert fresh.get_history() == sm.get_history()
    assert fresh.version == sm.version
    assert fresh.get_metrics() == sm.get_metrics()
    assert (await fresh.serialize()).to_dict() == snap.to_dict()
    assert (await fresh.dispatch("DEPLOYED")).success  # and it carries on


async def test_committed_effects_survive_a_round_trip(make_config: Any) -> None:
    rollbacks: list[str] = []
    cfg = _config(make_config, rollbacks)
    sm = create_state_machine(cfg, {"logs": []})
    await sm.dispatch("START")
    await sm.dispatch("VALIDATED")
    fresh = create_state_machine(cfg, {"logs": []})
    await fresh.rehydrate((await sm.serialize()).to_json())
    result = await fresh.compensate()
    assert rollbacks == ["deploying"] and result.compensated == ["deploying"]


async def test_to_dict_is_json_safe(make_config: Any, persisted: Any, fast_retry: Any) -> None:
    flaky = effect().execute(lambda c, s: {"success": s.attempts > 1}).set_idempotent(True).build()
    cfg = make_config(
        effects={"validating": flaky}, retry_policy=fast_retry(2), persist_state=persisted
    )
    seen: list[dict[str, Any]] = []
    original = persisted.__call__

    def keep(snapshot: SerializableState) -> None:
        seen.append(snapshot.to_dict())
        original(snapshot)

    cfg.persist_state = keep
    sm = create_state_machine(cfg, CONTEXTS["pydantic"]())
    await sm.dispatch(
        Event("START", payload={"sha": "abc", "canary": [1, 2]}, correlation_id="c-9")
    )
    seen.append((await sm.serialize()).to_dict())
    assert any(d["in_flight"] is not None for d in seen)  # mid-transition snapshots too
    for d in seen:
        text = json.dumps(d, allow_nan=False)
        assert json.loads(text) == d
    last = seen[-1]
    for key in (
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
    ):
        assert key in last, key


async def test_to_dict_stays_json_safe_with_rich_payloads(make_config: Any) -> None:
    meta = {"finished_at": datetime(2025, 2, 3, tzinfo=UTC), "hosts": ("a", "b")}
    eff = (
        effect()
        .execute(lambda c, s: {"success": True, "metadata": meta})
        .set_idempotent(True)
        .build()
    )
    sm = create_state_machine(make_config(effects={"validating": eff}), {})
    window = {"opens": datetime(2025, 2, 3, 4, 5, tzinfo=UTC), "regions": ("eu", "us")}
    assert (await sm.dispatch(Event("START", payload=window))).success
    d = (await sm.serialize()).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d


# --- invalid snapshots ------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(d: dict[str, Any]) -> Any:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return d

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(d: dict[str, Any]) -> Any:
        del d[key]
        return d

    return mutate


BAD: dict[str, Callable[[dict[str, Any]], Any]] = {
    "truncated-json": lambda d: json.dumps(d)[: len(json.dumps(d)) // 2],
    "not-json": lambda d: "{not json",
    "empty-object": lambda d: {},
    "a-list": lambda d: [d],
    "none": lambda d: None,
    "no-current-state": _drop("current_state"),
    "no-context": _drop("context"),
    "no-metrics": _drop("metrics"),
    "no-history": _drop("history"),
    "no-version": _drop("version"),
    "no-schema-version": _drop("schema_version"),
    "schema-version-3": _set("schema_version", 3),
    "schema-version-0": _set("schema_version", 0),
    "unknown-current-state": _set("current_state.name", "ghost"),
    "unknown-history-state": _set("history.0.name", "ghost"),
    "unknown-visit-state": _set("metrics.states.0.state", "ghost"),
    "negative-version": _set("version", -1),
    "string-version": _set("version", "3"),
    "bogus-status": _set("status", "exploded"),
    "garbage-timestamp": _set("current_state.timestamp", "yesterday"),
    "naive-timestamp": _set("current_state.timestamp", "2025-01-01T00:00:00"),
    "data-not-object": _set("current_state.data", [1]),
    "history-not-list": _set("history", {"0": 1}),
    "bool-counter": _set("metrics.total_attempts", True),
    "version-2-to-the-63": _set("version", 2**63),
    "state-version-2-to-the-64": _set("current_state.version", 2**64),
    "tampered-fingerprint": _set("fingerprint", "0" * 32),
    "other-definition-id": _set("definition_id", "some-other-workflow"),
    "committed-effect-unknown-transition": _set("committed_effects.0.transition_index", 99),
    "context-not-object": _set("context", [1, 2, 3]),
}


async def _machine_with_progress(make_config: Any) -> tuple[Any, Any]:
    cfg = _config(make_config)
    source = create_state_machine(cfg, {"logs": []})
    await source.dispatch("START")
    await source.dispatch("VALIDATED")
    target = create_state_machine(cfg, {"logs": ["mine"]})
    await target.dispatch("START")
    return source, target


async def _assert_rejected_and_untouched(target: Any, bad: Any) -> None:
    before = (await target.serialize()).to_dict()
    ctx, state, history = target.get_context(), target.get_state(), target.get_history()
    with pytest.raises(StateMachineError) as info:
        await target.rehydrate(bad)
    assert info.value.code == ErrorCode.INVALID_SNAPSHOT
    assert (await target.serialize()).to_dict() == before
    assert target.get_context() is ctx and target.get_state() is state
    assert target.get_history() == history
    assert (await target.dispatch("VALIDATED")).success  # still usable


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_snapshot_is_rejected_and_changes_nothing(make_config: Any, case: str) -> None:
    source, target = await _machine_with_progress(make_config)
    good = (await source.serialize()).to_dict()
    await _assert_rejected_and_untouched(target, BAD[case](copy.deepcopy(good)))


@pytest.mark.parametrize(
    "case",
    ["empty-object", "no-context", "schema-version-3", "bool-counter", "version-2-to-the-63"],
)
async def test_from_dict_rejects_bad_snapshots_with_a_typed_error(
    make_config: Any, case: str
) -> None:
    source, _ = await _machine_with_progress(make_config)
    bad = BAD[case](copy.deepcopy((await source.serialize()).to_dict()))
    with pytest.raises(StateMachineError) as info:
        SerializableState.from_dict(bad)
    assert info.value.code == ErrorCode.INVALID_SNAPSHOT


async def test_snapshot_of_another_definition_is_rejected(make_config: Any) -> None:
    _, target = await _machine_with_progress(make_config)
    other = create_state_machine(make_config(id="another-workflow"), {"logs": []})
    await other.dispatch("START")
    await _assert_rejected_and_untouched(target, (await other.serialize()).to_dict())


async def test_snapshot_of_a_changed_definition_is_rejected(make_config: Any) -> None:
    _, target = await _machine_with_progress(make_config)
    base = make_config()
    changed = make_config(
        states=[*base.states, "paused"],
        events=[*base.events, "PAUSE"],
        transitions=[*base.transitions, {"from": "validating", "to": "paused", "event": "PAUSE"}],
    )
    other = create_state_machine(changed, {"logs": []})  # same id, different shape
    await other.dispatch("START")
    await _assert_rejected_and_untouched(target, (await other.serialize()).to_json())


async def test_pydantic_context_is_validated_on_rehydrate(make_config: Any) -> None:
    cfg = _config(make_config)
    source = create_state_machine(cfg, CONTEXTS["pydantic"]())
    await source.dispatch("START")
    target = create_state_machine(cfg, CONTEXTS["pydantic"]())
    await target.dispatch("START")
    bad = (await source.serialize()).to_dict()
    bad["context"]["deployment_id"] = "not-a-number"
    await _assert_rejected_and_untouched(target, bad)


async def test_dataclass_context_with_unknown_fields_is_rejected(make_config: Any) -> None:
    cfg = _config(make_config)
    source = create_state_machine(cfg, FlatCtx(1))
    await source.dispatch("START")
    target = create_state_machine(cfg, FlatCtx(2))
    await target.dispatch("START")
    bad = (await source.serialize()).to_dict()
    bad["context"]["injected"] = "x"
    await _assert_rejected_and_untouched(target, bad)


async def test_the_largest_version_a_store_can_hold_loads(make_config: Any) -> None:
    source, _ = await _machine_with_progress(make_config)
    doc = (await source.serialize()).to_dict()
    doc["version"] = 2**63 - 1
    assert SerializableState.from_dict(doc).version == 2**63 - 1
