"""A stored machine's snapshot JSON is assembled from pieces cached per machine
(``_snapshot_json``); the bytes must stay exactly ``json.dumps(snapshot.to_dict())``,
whatever the machine went through (retries, failures, rehydrate, resume, compensate)."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import deploysm
from deploysm import (
    EffectResult,
    RetryPolicy,
    SerializableState,
    State,
    StateMachineConfig,
    StateMachineError,
    StateMachineMetrics,
    StateMetrics,
    StateTotals,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.durable._json import SnapshotJSON, _Prefix
from deploysm.durable._snapshot import CommittedEffect, InFlight, state_out
from deploysm.stores import EncryptedCodec, JSONCodec, MemoryStore
from deploysm.stores._base import encode_snapshot
from deploysm.testing import VirtualClock

KEY = bytes(range(32))


def reference(snap: SerializableState) -> bytes:
    """What every save wrote before the cache: the dict, dumped whole."""
    return json.dumps(snap.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def plaintext(mid: str, blob: bytes) -> bytes:
    nonce_end = 4 + 1 + blob[4] + 12
    aad = blob[:nonce_end] + mid.encode("utf-8", "surrogatepass")
    return AESGCM(KEY).decrypt(blob[nonce_end - 12 : nonce_end], blob[nonce_end:], aad)


# --- random snapshots, changed the ways the engine changes them --------------------------

texts = st.text(max_size=8) | st.sampled_from(["é", "\u2028", "\ud800", '"\\', "日本"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
times = st.datetimes(timezones=zones)
names = st.sampled_from(["a", "b", "c", "ünï"])
states = st.builds(
    State,
    names,
    st.dictionaries(texts, json_values, max_size=3),
    times,
    st.integers(0, 10**6),
    st.integers(0, 5),
    st.none() | texts,
)
visits = st.builds(
    StateMetrics,
    names,
    times,
    st.none() | times,
    st.none() | st.floats(0, 1e9),
    st.integers(0, 5),
    st.integers(0, 5),
)
flights = st.none() | st.builds(
    InFlight,
    names,
    names,
    st.builds(deploysm.Event, names, json_values, times, st.none() | texts),
    st.integers(0, 9),
    st.integers(1, 3),
    texts,
    times,
    st.sampled_from(["running", "retry_wait"]),
    st.none() | times,
)
committed = st.lists(
    st.builds(CommittedEffect, names, names, names, st.integers(0, 9), texts, st.integers(0, 99)),
    max_size=2,
)


totals = st.dictionaries(
    names,
    st.builds(
        StateTotals, st.integers(0, 99), st.floats(0, 1e9), st.integers(0, 99), st.integers(0, 9)
    ),
    max_size=3,
)


def fresh_metrics(draw: st.DrawFn) -> StateMachineMetrics:
    return StateMachineMetrics(
        states=draw(st.lists(visits, max_size=4)),
        per_state=draw(totals),
        started_at=draw(st.none() | times),
    )


def fresh_snapshot(draw: st.DrawFn) -> SerializableState:
    return SerializableState(
        current_state=draw(states),
        context=draw(json_values),
        history=draw(st.lists(states, max_size=4)),
        metrics=fresh_metrics(draw),
        version=draw(st.integers(0, 10**9)),
        machine_id=draw(texts),
        definition_id="d",
        fingerprint="f" * 8,
    )


def change(draw: st.DrawFn, s: SerializableState) -> None:
    """One change of the kinds a running machine makes between two saves."""
    op = draw(
        st.sampled_from(
            [
                "append",
                "append",
                "visit",
                "last_visit",
                "head",
                "tail",
                "replace",
                "replace_visits",
                "trim",
                "push",
                "push",
            ]
        )
    )
    if op == "append":  # a commit: history grows, the finished visit is closed, a new one starts
        s.history.extend(draw(st.lists(states, min_size=1, max_size=3)))
        s.current_state = draw(states)
    elif op == "visit":
        s.metrics.states.append(draw(visits))
    elif op == "last_visit" and s.metrics.states:
        v = s.metrics.states[-1]
        v.exited_at = draw(st.none() | times)
        v.duration_ms = draw(st.none() | st.floats(0, 1e9))
        v.errors += draw(st.integers(0, 3))
    elif op == "head":
        s.status = draw(st.sampled_from(["active", "failed", "needs_attention"]))
        s.version += 1
        s.context = draw(json_values)
        s.metrics.total_transitions += 1
        s.metrics.total_duration_ms = draw(st.floats(0, 1e9))
        s.metrics.current_state = draw(st.none() | names)
    elif op == "tail":
        s.in_flight = draw(flights)
        s.committed_effects = draw(committed)
        s.last_error = draw(st.none() | st.dictionaries(texts, json_values, max_size=2))
        s.state_deadline = draw(st.none() | times)
    elif op == "replace":  # rehydrate/resume: a new list, possibly shorter or equal in length
        s.history = draw(st.lists(states, max_size=4))
    elif op == "replace_visits":
        s.metrics = fresh_metrics(draw)
    elif op == "trim":  # old entries drop off the front
        del s.history[: draw(st.integers(0, len(s.history)))]
        del s.metrics.states[: draw(st.integers(0, len(s.metrics.states)))]
    elif op == "push":  # a commit under history_limit: append, keep the last ``limit``
        limit = draw(st.integers(0, 4))
        s.history.append(draw(states))
        del s.history[: max(len(s.history) - limit, 0)]
        s.metrics.states.append(draw(visits))
        del s.metrics.states[: max(len(s.metrics.states) - limit - 1, 0)]
        name = draw(names)
        s.metrics.per_state.setdefault(name, StateTotals()).visits += 1


def test_entries_left_after_old_ones_drop_off_are_not_encoded_again() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    encoded: list[int] = []

    def out(s: State[Any]) -> dict[str, Any]:
        encoded.append(s.version)
        return state_out(s)

    window = _Prefix(out)
    history: list[State[Any]] = []
    for version in range(1, 50):
        history.append(State("a", {"v": version}, t, version))
        del history[: max(len(history) - 5, 0)]
        assert window.text(history, len(history)) == ",".join(
            json.dumps(state_out(s), separators=(",", ":")) for s in history
        )
    assert encoded == list(range(1, 50))  # each entry once, though the front moved
    history = list(history)  # a new list with the same entries (a rehydrate would differ)
    assert window.text(history[1:], 4) and encoded == list(range(1, 50))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_assembled_json_equals_the_whole_dump(data: st.DataObject) -> None:
    s = fresh_snapshot(data.draw)
    cache = SnapshotJSON()
    s._json = cache
    encrypted = EncryptedCodec({"k": KEY}, "k")
    for _ in range(data.draw(st.integers(1, 12))):
        expected = reference(s)
        assert s.to_json().encode() == expected
        assert encode_snapshot(JSONCodec(), s) == expected
        assert plaintext(s.machine_id, encode_snapshot(encrypted, s)) == expected
        change(data.draw, s)
    other = SnapshotJSON()  # another machine's cache, handed the same lists
    assert other.dumps(s).encode() == reference(s)


def test_a_value_json_refuses_fails_both_ways_and_leaves_the_cache_sound() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    s = SerializableState(
        State("a", {}, t, 0), {}, [], StateMachineMetrics([StateMetrics("a", t)]), 0, "m", "d", "f"
    )
    s._json = SnapshotJSON()
    s.history.append(State("a", {"x": 1}, t, 1))
    assert s.to_json() == reference(s).decode()
    for bad, error in (({"x": math.nan}, TypeError), ({"x": object()}, TypeError)):
        s.history.append(State("a", bad, t, 2))
        with pytest.raises(error):
            reference(s)
        with pytest.raises(error):
            s.to_json()
        s.history.pop()  # never saved, so the cache never held it
    s.last_error = {"x": math.inf}  # passed to json as is: json refuses it
    with pytest.raises(ValueError):
        reference(s)
    with pytest.raises(ValueError):
        s.to_json()
    s.last_error = None
    s.history.append(State("a", {"x": 2.5}, t, 2))
    assert s.to_json() == reference(s).decode()


# --- custom codecs still get the dict ------------------------------------------------------


class DictCodec:
    def __init__(self) -> None:
        self.seen: list[Mapping[str, Any]] = []

    def encode(self, machine_id: str, data: Mapping[str, Any]) -> bytes:
        self.seen.append(data)
        return json.dumps(data, sort_keys=True).encode()

    def decode(self, machine_id: str, blob: bytes) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(blob)
        return out


class UpperJSON(JSONCodec):
    __slots__ = ()

    def encode(self, machine_id: str, data: Mapping[str, Any]) -> bytes:
        return b" " + super().encode(machine_id, data)  # still JSON, but not what JSONCodec writes


@pytest.mark.parametrize("codec", [DictCodec(), UpperJSON()])
async def test_a_custom_codec_or_subclass_gets_the_dict(codec: Any) -> None:
    store = MemoryStore(codec)
    sm = create_state_machine(pipeline(store, Tape([True])), {"n": 0}, machine_id="m")
    await sm.dispatch("NEXT")
    snap = await store.load("m")
    assert snap is not None and snap.current_state.name == "b"
    if isinstance(codec, DictCodec):
        assert codec.seen and all(isinstance(d, dict) for d in codec.seen)
        assert codec.seen[-1] == snap.to_dict()
    else:
        assert store._rows["m"].blob.startswith(b" {")


# --- real machines ------------------------------------------------------------------------


class Tape:
    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes or [True]
        self.i = 0

    def next(self) -> bool:
        self.i += 1
        return self.outcomes[(self.i - 1) % len(self.outcomes)]


class CheckingStore(MemoryStore):
    """Checks every save's bytes against the whole dump of the same snapshot. (A failed
    assert inside ``save`` would only become a ``PERSISTENCE_ERROR``: mismatches are kept.)"""

    def __init__(self, codec: Any) -> None:
        super().__init__(codec)
        self.checked = 0
        self.mismatches: list[tuple[bytes, bytes]] = []

    async def save(self, snapshot: SerializableState, **kw: Any) -> int | None:
        expected = reference(snapshot)
        blob = encode_snapshot(self.codec, snapshot)  # what the store writes
        got = blob if isinstance(self.codec, JSONCodec) else plaintext(snapshot.machine_id, blob)
        if got != expected or snapshot._json is None:  # the engine's snapshot has the cache
            self.mismatches.append((got, expected))
        self.checked += 1
        return await super().save(snapshot, **kw)


def pipeline(store: Any, tape: Tape, **extra: Any) -> StateMachineConfig[Any, Any, Any]:
    def flaky(ctx: dict[str, Any], state: Any) -> Any:
        ctx["n"] += 1
        if tape.next():
            return EffectResult(True, "ok", {"n": ctx["n"], "at": datetime(2025, 1, 1, tzinfo=UTC)})
        raise RuntimeError("boom")

    undoable = effect().execute(flaky).rollback(lambda c, s: None).build()
    idempotent = effect().execute(flaky).set_idempotent(True).build()
    return StateMachineConfig(
        id="p",
        initial_state="a",
        states=["a", "b", "c", "done", "undone"],
        events=["NEXT", "BACK", "FINISH"],
        transitions=[
            Transition("a", "b", "NEXT"),
            Transition("b", "c", "NEXT"),
            Transition(["b", "c", "undone"], "a", "BACK"),
            Transition("c", "done", "FINISH"),
        ],
        effects={"b": undoable, "c": idempotent},
        compensated_state="undone",
        retry_policy=RetryPolicy(max_attempts=2, initial_delay_ms=1.0, max_delay_ms=2.0),
        clock=VirtualClock(),
        random=random.Random(0),
        store=store,
        **extra,
    )


OPS = st.sampled_from(
    ["NEXT"] * 5
    + ["BACK", "FINISH", "rehydrate_old", "rehydrate_now", "twin", "resume", "new", "ctx"]
    + ["compensate", "fail"]
)


async def twin_snapshots() -> list[SerializableState]:
    """Snapshots of machine "m" from another timeline: rehydrating one swaps in a history
    that differs from the machine's at any length."""
    twin = create_state_machine(pipeline(MemoryStore(), Tape([])), {"n": 100}, machine_id="m")
    out = []
    for i in range(16):
        await twin.dispatch({"type": "BACK" if i % 3 == 2 else "NEXT", "payload": {"twin": i}})
        out.append(await twin.serialize())
    return out


async def drive(codec: Any, outcomes: list[bool], ops: list[str], payloads: list[Any]) -> int:
    store = CheckingStore(codec)
    tape = Tape(outcomes)
    cfg = pipeline(store, tape)
    sm = create_state_machine(cfg, {"n": 0}, machine_id="m")
    kept: list[SerializableState] = []
    twins = await twin_snapshots()
    for i, op in enumerate(ops):
        try:
            if op in ("NEXT", "BACK", "FINISH"):
                await sm.dispatch({"type": op, "payload": payloads[i % len(payloads)]})
                kept.append(await sm.serialize())
            elif op == "rehydrate_old" and kept:  # the next save conflicts: the machine goes stale
                await sm.rehydrate(kept[len(kept) // 2])
                await sm.persist(bump=True)
            elif op == "rehydrate_now":
                loaded = await store.load("m")
                if loaded is not None:
                    await sm.rehydrate(loaded)
                    await sm.persist(bump=True)
            elif op == "twin":  # its save is checked, then refused (CONFLICT): the machine is stale
                await sm.rehydrate(twins[i * 7 % len(twins)])
                await sm.persist(bump=True)
            elif op == "resume":
                await sm.resume()
            elif op == "new":
                sm = create_state_machine(cfg, {"n": 0}, machine_id="m")
                await sm.resume()
            elif op == "ctx":
                sm.get_context()["note"] = f"op {i}"
                await sm.persist(bump=True)
            elif op == "compensate":
                await sm.compensate()
            elif op == "fail":
                await sm.fail("gave up")
        except StateMachineError:
            pass
    assert store.mismatches == []
    return store.checked


@settings(max_examples=60, deadline=None)
@given(
    encrypted=st.booleans(),
    outcomes=st.lists(st.booleans(), max_size=8),
    ops=st.lists(OPS, min_size=1, max_size=30),
    payloads=st.lists(st.none() | json_values, min_size=1, max_size=4),
)
def test_every_save_of_a_real_machine_writes_the_whole_dump(
    encrypted: bool, outcomes: list[bool], ops: list[str], payloads: list[Any]
) -> None:
    codec = EncryptedCodec({"k": KEY}, "k") if encrypted else JSONCodec()
    asyncio.run(drive(codec, outcomes, ops, payloads))


def test_a_long_run_is_checked_at_every_save() -> None:
    # a twin's history, longer than the machine's but different from its first entry on
    ops = ["NEXT", "NEXT", "twin", "NEXT", "resume", "NEXT", "twin", "new", "NEXT"]
    ops += ["NEXT", "NEXT", "BACK"] * 30 + ["resume", "rehydrate_old", "resume", "new"]
    ops = [*ops, "twin", "resume", "NEXT", "twin", "NEXT", "twin", "compensate"] * 2
    checked = asyncio.run(drive(JSONCodec(), [True, True, False], ops, [{"k": [1, 2]}, None]))
    assert checked > 150


async def test_only_machines_with_a_store_get_a_cache() -> None:
    seen: list[SerializableState] = []
    plain = create_state_machine(pipeline(None, Tape([True])), {"n": 0})
    hooked = create_state_machine(pipeline(None, Tape([True]), persist_state=seen.append), {"n": 0})
    stored = create_state_machine(pipeline(MemoryStore(), Tape([True])), {"n": 0})
    for sm in (plain, hooked, stored):
        await sm.dispatch("NEXT")
    assert plain._json is None and hooked._json is None
    assert seen and all(s._json is None for s in seen)
    assert (await stored.serialize())._json is None  # what users get is a plain copy
    assert stored._json is not None
    gone = weakref.ref(stored)
    del stored, sm
    gc.collect()
    assert gone() is None  # the cache does not keep its machine alive
