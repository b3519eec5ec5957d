"""Fuzz every parser of outside input: snapshots (from_dict / from_json / rehydrate),
events given to dispatch, and configs given to create_state_machine / validate."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import json
import math
import random
from datetime import UTC
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import deploysm
from deploysm import (
    Event,
    SerializableState,
    StateMachineConfig,
    StateMachineError,
    Transition,
    TransitionResult,
    create_state_machine,
    effect,
)
from deploysm.testing import VirtualClock

FUZZ = settings(max_examples=150, deadline=None)

finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def flaky_execute(ctx: dict[str, Any], state: Any) -> Any:
    ctx["n"] += 1
    return {"success": state.attempts > 1, "message": "ok" if state.attempts > 1 else "flaky"}


ROLLBACK_EFFECT = (
    effect().execute(flaky_execute).rollback(lambda ctx, s: ctx.update(n=ctx["n"] - 1)).build()
)
IDEMPOTENT_EFFECT = effect().execute(lambda ctx, s: None).set_idempotent(True).build()


def make_config(persisted: list[dict[str, Any]] | None = None) -> StateMachineConfig[Any, Any, Any]:
    return StateMachineConfig(
        id="fuzz",
        initial_state="idle",
        states=["idle", "deploying", "live", "done"],
        events=["DEPLOY", "PROMOTE", "ROLLBACK", "FINISH"],
        transitions=[
            Transition("idle", "deploying", "DEPLOY", effect=ROLLBACK_EFFECT),
            Transition("deploying", "live", "PROMOTE", effect=IDEMPOTENT_EFFECT),
            Transition(["deploying", "live"], "idle", "ROLLBACK"),
            Transition("live", "done", "FINISH"),
        ],
        retry_policy={"max_attempts": 3, "initial_delay_ms": 10.0},
        clock=VirtualClock(),
        random=random.Random(7),
        persist_state=None if persisted is None else lambda s: persisted.append(s.to_dict()),
    )


CONFIG = make_config()
EVENTS = ["DEPLOY", "PROMOTE", "ROLLBACK", "FINISH"]


@functools.cache
def real_snapshots() -> tuple[str, ...]:
    """JSON of real snapshots: intents, a retry wait, commits, and a final serialize()."""
    persisted: list[dict[str, Any]] = []

    async def go() -> str:
        m = create_state_machine(make_config(persisted), {"n": 0, "env": "prod"})
        for ev in ("DEPLOY", "PROMOTE", "ROLLBACK", "DEPLOY"):
            assert (await m.dispatch(Event(ev, payload={"v": 1}, correlation_id="c-1"))).success
        return (await m.serialize()).to_json()

    final = asyncio.run(go())
    assert any(s["in_flight"] is not None for s in persisted)
    return (final, *(json.dumps(s) for s in persisted))


async def state_of(m: Any) -> dict[str, Any]:
    """serialize() as a dict, minus the one field that moves with the wall clock."""
    doc = (await m.serialize()).to_dict()
    del doc["metrics"]["total_duration_ms"]
    return doc


async def try_rehydrate(value: Any) -> None:
    """rehydrate must succeed or raise INVALID_SNAPSHOT, leaving the machine as it was."""
    m = create_state_machine(CONFIG, {"n": 0, "env": "prod"})
    await m.dispatch("DEPLOY")
    before = await state_of(m)
    try:
        await m.rehydrate(value)
    except StateMachineError as e:
        assert e.code == "INVALID_SNAPSHOT", e
        assert await state_of(m) == before
        assert m.get_context() == {"n": 1, "env": "prod"}


def check_parsers(value: Any) -> None:
    for parse in (SerializableState.from_dict, SerializableState.from_json):
        try:
            parse(value)
        except StateMachineError as e:
            assert e.code == "INVALID_SNAPSHOT", e
    asyncio.run(try_rehydrate(value))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


@st.composite
def tampered(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> dict[str, Any]:
    doc = json.loads(draw(st.sampled_from(real_snapshots())))
    path = draw(st.sampled_from(paths(doc)))
    return mutate(doc, path, draw(values), draw(st.booleans()))


# --------------------------------------------------------------------- snapshots


def test_real_snapshots_round_trip() -> None:
    for text in real_snapshots():
        check_parsers(text)
        check_parsers(json.loads(text))
        assert SerializableState.from_json(text).to_dict() == json.loads(text)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(b"\xff\xfe{")
@example("[" * 100_000)
@example("NaN")
def test_random_bytes_and_text(value: bytes | str) -> None:
    check_parsers(value)


@FUZZ
@given(json_values)
def test_random_json_values(value: Any) -> None:
    check_parsers(value)
    check_parsers(json.dumps(value))


@FUZZ
@given(st.data())
def test_truncated_snapshot_json(data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(real_snapshots()))
    cut = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(StateMachineError) as info:
        SerializableState.from_json(text[:cut])
    assert info.value.code == "INVALID_SNAPSHOT"
    check_parsers(text[:cut])


@FUZZ
@given(tampered())
def test_snapshot_with_a_field_deleted_or_replaced(doc: dict[str, Any]) -> None:
    check_parsers(doc)
    check_parsers(json.dumps(doc))


@FUZZ
@given(st.data())
def test_bit_flipped_snapshot_json(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(real_snapshots())).encode())
    for pos in data.draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=4)):
        raw[pos // 8] ^= 1 << (pos % 8)
    check_parsers(bytes(raw))
    check_parsers(raw.decode("utf-8", errors="replace"))


async def usable_after_rehydrate(value: Any) -> None:
    m = create_state_machine(CONFIG, {"n": 0, "env": "prod"})
    try:
        await m.rehydrate(value)
    except StateMachineError as e:
        assert e.code == "INVALID_SNAPSHOT"
        return
    text = (await m.serialize()).to_json()  # an accepted snapshot can be written again
    SerializableState.from_json(text)
    for ev in EVENTS:
        try:
            result = await m.dispatch(ev)
        except StateMachineError:
            continue
        assert isinstance(result, TransitionResult)
        (await m.serialize()).to_json()


@FUZZ
@given(tampered())
def test_accepted_snapshot_leaves_a_usable_machine(doc: dict[str, Any]) -> None:
    asyncio.run(usable_after_rehydrate(doc))


def test_snapshot_with_no_metric_visits() -> None:
    doc = mutate(json.loads(real_snapshots()[0]), ("metrics", "states"), [], delete=False)
    asyncio.run(usable_after_rehydrate(doc))


@pytest.mark.parametrize(
    "path",
    [("context", "n"), ("metrics", "total_duration_ms"), ("metrics", "states", 0, "duration_ms")],
)
@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_non_finite_numbers_in_snapshot_json(path: tuple[Any, ...], value: float) -> None:
    """Python's json reads NaN/Infinity; a snapshot holding them must be rejected
    or leave a machine that can still write its snapshot (to_json forbids them)."""
    doc = mutate(json.loads(real_snapshots()[0]), path, value, delete=False)
    asyncio.run(usable_after_rehydrate(json.dumps(doc)))


@pytest.mark.parametrize(
    ("field", "value"), [("current_state", "idle"), ("history", None), ("metrics", {})]
)
def test_rehydrate_a_malformed_serializable_state_object(field: str, value: Any) -> None:
    real = SerializableState.from_json(real_snapshots()[0])
    asyncio.run(try_rehydrate(dataclasses.replace(real, **{field: value})))


# --------------------------------------------------------------------- dispatch

EVENT_KEYS = st.sampled_from(["type", "payload", "timestamp", "correlation_id"])
aware = st.datetimes(timezones=st.just(UTC))
timestamps = st.one_of(st.datetimes(), aware, st.text(max_size=5), st.integers(), st.none())


@st.composite
def events_objects(draw: st.DrawFn) -> Event[Any]:
    etype = draw(st.one_of(st.sampled_from(EVENTS), st.text(max_size=4), json_values))
    kwargs: dict[str, Any] = {"payload": draw(json_values)}
    if draw(st.booleans()):
        kwargs["timestamp"] = draw(timestamps)
    if draw(st.booleans()):
        kwargs["correlation_id"] = draw(st.one_of(st.text(max_size=4), st.integers(), json_values))
    return Event(etype, **kwargs)


event_dicts = st.dictionaries(
    st.one_of(EVENT_KEYS, st.text(max_size=4), st.integers()),
    st.one_of(st.sampled_from(EVENTS), json_values, timestamps),
    max_size=5,
)
arbitrary_events = st.one_of(
    *(st.integers(), st.none(), st.floats(), st.binary(max_size=6), st.text(max_size=6)),
    *(st.sampled_from(EVENTS), st.lists(json_scalars, max_size=3), event_dicts, events_objects()),
)


async def dispatch_checked(clock_kind: str, value: Any) -> None:
    persisted: list[dict[str, Any]] = []
    cfg = make_config(persisted)
    if clock_kind == "system":
        cfg = dataclasses.replace(cfg, clock=None)
    m = create_state_machine(cfg, {"n": 0, "env": "prod"})
    before = await state_of(m)
    state = m.get_state()
    try:
        result = await m.dispatch(value)
    except StateMachineError as e:
        assert e.code == "INVALID_EVENT", e
        assert m.get_state() is state
        assert await state_of(m) == before
        assert persisted == []
        return
    assert isinstance(result, TransitionResult)
    if not result.success:
        assert m.get_state() is state
    # every snapshot written for an accepted event can be loaded back
    for snap in persisted:
        SerializableState.from_dict(snap)


@FUZZ
@pytest.mark.parametrize("clock_kind", ["virtual", "system"])
@given(value=arbitrary_events)
@example(value=Event(["DEPLOY"]))
@example(value={"type": "DEPLOY", "timestamp": "yesterday"})
def test_dispatch_arbitrary_values(clock_kind: str, value: Any) -> None:
    asyncio.run(dispatch_checked(clock_kind, value))


@pytest.mark.parametrize("clock_kind", ["virtual", "system"])
def test_event_with_non_string_correlation_id(clock_kind: str) -> None:
    """Either INVALID_EVENT, or the intent written for it can be loaded back."""
    asyncio.run(dispatch_checked(clock_kind, Event("DEPLOY", correlation_id=5)))


# --------------------------------------------------------------------- configs

CONFIG_KEYS = [f.name for f in dataclasses.fields(StateMachineConfig) if f.init]
names = st.lists(st.one_of(st.text(max_size=3), st.lists(st.text(max_size=2), max_size=2)))
junk = st.one_of(json_values, st.floats(), st.sampled_from([10**400, -(10**400)]), names)


def base_config() -> dict[str, Any]:
    cfg: dict[str, Any] = {"id": "cfg", "initial_state": "a", "states": ["a", "b", "c"]}
    cfg["events"], cfg["final_states"] = ["GO", "STOP"], ["c"]
    pairs = [("a", "b", "GO"), (["a", "b"], "c", "STOP")]
    cfg["transitions"] = [{"from": f, "to": to, "event": e} for f, to, e in pairs]
    cfg["retry_policy"], cfg["timeout"] = {"max_attempts": 2}, {"effect_timeout_ms": 1000}
    return cfg


@st.composite
def config_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    if draw(st.booleans()):
        keys = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6))
        return draw(st.dictionaries(keys, junk, max_size=8))
    doc = base_config()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        doc = mutate(doc, path, draw(junk), draw(st.booleans()))
    return doc


def check_config(cfg: Any) -> None:
    report = deploysm.validate(cfg)  # never raises
    assert isinstance(report.errors, list)
    try:
        create_state_machine(cfg, {})
    except StateMachineError as e:
        assert e.code == "INVALID_CONFIG", e
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        assert not report.ok, "validate() found no error in a config create() refused"
    else:
        assert report.ok, report.errors


@settings(max_examples=300, deadline=None)
@given(config_mappings())
def test_random_config_mappings(cfg: dict[Any, Any]) -> None:
    check_config(cfg)


# minimal reproductions of what the fuzzer found (one id per failure site)
CONFIG_REPROS: dict[str, dict[str, Any]] = {
    "initial_state-unhashable": {"initial_state": ["a"]},
    "final_states-unhashable": {"final_states": [["c"]]},
    "final_states-not-iterable": {"final_states": 5},
    "compensated_state-unhashable": {"compensated_state": {}},
    "transition-to-unhashable": {"transitions": [{"from": "a", "to": ["b"], "event": "GO"}]},
    "transition-from-unhashable": {"transitions": [{"from": [["a"]], "to": "b", "event": "GO"}]},
    "transition-event-unhashable": {"transitions": [{"from": "a", "to": "b", "event": {}}]},
    "timeout_event-unhashable": {"timeout": {"timeout_event": []}},
    "timeout-huge-int": {"timeout": {"effect_timeout_ms": 10**400}},
    "retry-huge-int": {"retry_policy": {"initial_delay_ms": 10**400}},
    "redact_keys-not-iterable": {"redact_keys": 5},
    "redact_keys-not-strings": {"redact_keys": [1]},
    "effects-list-of-pairs": {"effects": [["b", IDEMPOTENT_EFFECT]]},
    "effect-execute-not-callable": {"effects": {"b": deploysm.Effect(execute=123)}},
    "retry-max-attempts-huge": {"retry_policy": {"max_attempts": 10**18}},
    "retry-delay-huge-float": {"retry_policy": {"max_delay_ms": 1e300}},
    "timeout-huge-float": {"timeout": {"state_timeout_ms": 1e300}},
}


@pytest.mark.parametrize("override", list(CONFIG_REPROS.values()), ids=list(CONFIG_REPROS))
def test_config_repros(override: dict[str, Any]) -> None:
    check_config(base_config() | override)


@FUZZ
@given(st.one_of(json_values, st.binary(max_size=5), st.floats()))
def test_non_mapping_configs(cfg: Any) -> None:
    check_config(cfg)
