"""Memory and store agree: after any durable write that failed, the machine in memory
is what the store holds (state, context, version, history, status, in-flight
transition, metrics, queued journal records), so nothing it did is half remembered.

Failures are real write failures of a store: a payload JSON cannot hold (the store's
encoder refuses it), and a store whose ``save`` raises the error a full disk gives.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deploysm import (
    ErrorCode,
    Event,
    RetryPolicy,
    StateMachineConfig,
    StateMachineError,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.stores import MemoryStore
from deploysm.testing import VirtualClock

MID = "m-1"


class FlakyStore(MemoryStore):
    """A ``MemoryStore`` whose next saves fail as ``plan`` says (True: fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: list[bool] = []
        self.failed = 0

    async def save(self, *args: Any, **kw: Any) -> int | None:
        if self.plan and self.plan.pop(0):
            self.failed += 1
            raise StateMachineError(
                "SQLite store error: OperationalError: disk I/O error", ErrorCode.PERSISTENCE_ERROR
            )
        return await super().save(*args, **kw)  # the lease's token, when it takes one


def config(store: Any, **kw: Any) -> StateMachineConfig[Any, Any, Any]:
    def work(ctx: dict[str, Any], state: Any) -> None:
        ctx["work"] = ctx.get("work", 0) + 1

    def risky(ctx: dict[str, Any], state: Any) -> None:
        ctx["risky"] = ctx.get("risky", 0) + 1
        if state.data.get("payload") == "boom" or ctx["risky"] % 3 == 0:
            raise RuntimeError("risky failed")

    def undo(ctx: dict[str, Any], state: Any) -> None:
        ctx["undone"] = ctx.get("undone", 0) + 1

    return StateMachineConfig(
        id="flow",
        initial_state="idle",
        states=["idle", "working", "checked", "done"],
        events=["GO", "CHECK", "BACK", "FINISH"],
        transitions=[
            Transition("idle", "working", "GO"),
            Transition("working", "checked", "CHECK"),
            Transition(["working", "checked"], "idle", "BACK"),
            Transition(["working", "checked"], "done", "FINISH"),
        ],
        effects={
            "working": effect().execute(work).set_idempotent(True).build(),
            "checked": effect().execute(risky).rollback(undo).build(),
        },
        retry_policy=RetryPolicy(max_attempts=2, initial_delay_ms=10),
        store=store,
        clock=VirtualClock(),
        random=random.Random(7),
        **kw,
    )


def comparable(snap: Any) -> dict[str, Any]:
    """A snapshot as data, less what is by design not stored (a live duration)."""
    d: dict[str, Any] = snap.to_dict()
    d["metrics"].pop("total_duration_ms", None)
    return d


async def assert_memory_is_the_store(sm: Any, store: MemoryStore) -> None:
    stored = await store.load(MID)
    mine = await sm.serialize()
    assert sm._pending == []  # no journal record of a write that did not happen
    if stored is None:  # never written: a machine as new
        assert (mine.current_state.name, mine.version, mine.history) == ("idle", 0, [])
        assert (mine.status, mine.in_flight, mine.committed_effects) == ("active", None, [])
        assert mine.context == {}
    else:
        assert comparable(mine) == comparable(stored)
        assert sm._saved_version == stored.version


async def test_a_payload_json_cannot_hold_leaves_no_journal_record_queued() -> None:
    store = MemoryStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    assert (await sm.dispatch("GO")).success
    assert (await sm.dispatch("BACK")).success

    result = await sm.dispatch(Event("GO", payload=object()))

    assert not result.success and result.error is not None
    assert result.error.code == ErrorCode.PERSISTENCE_ERROR
    await assert_memory_is_the_store(sm, store)
    assert (await sm.dispatch("GO")).success
    kinds = [e.kind for e in await store.journal(MID)]
    assert kinds[-2:] == ["intent", "committed"] and kinds.count("intent") == 2


async def test_a_transition_without_effect_whose_write_fails_does_not_move() -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    assert (await sm.dispatch("GO")).success
    store.plan = [True]

    result = await sm.dispatch("FINISH")  # to a final state, no effect

    assert not result.success and result.error is not None
    assert result.error.code == ErrorCode.PERSISTENCE_ERROR
    assert result.new_state.name == "working"
    assert (sm.get_state().name, sm.status, sm.version) == ("working", "active", 2)
    await assert_memory_is_the_store(sm, store)
    assert (await sm.dispatch("FINISH")).success  # the store took it this time
    assert (await store.load(MID)).status == "completed"  # type: ignore[union-attr]


async def test_a_commit_that_fails_leaves_the_transition_in_flight_as_stored() -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    store.plan = [False, True]  # the intent is written, the commit is not

    result = await sm.dispatch("GO")

    assert not result.success and result.new_state.name == "idle"
    assert sm._in_flight is not None  # the effect ran; the store still says in flight
    await assert_memory_is_the_store(sm, store)
    assert (await sm.resume()) is not None  # finishes it (idempotent: runs again)
    assert sm.get_state().name == "working"
    await assert_memory_is_the_store(sm, store)


async def test_the_first_write_failing_leaves_a_machine_as_new() -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    store.plan = [True]

    result = await sm.dispatch("GO")

    assert not result.success
    assert await store.load(MID) is None
    await assert_memory_is_the_store(sm, store)
    assert (await sm.dispatch("GO")).success


OPS = st.sampled_from(
    ["GO", "CHECK", "BACK", "FINISH", "boom", "bad", "resume", "cancel", "compensate", "fail"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(OPS, st.lists(st.booleans(), max_size=4)), max_size=14))
@example(steps=[("GO", [False, True]), ("resume", [True])])  # resume's own intent fails
async def test_after_any_failed_write_memory_equals_the_store(
    steps: list[tuple[str, list[bool]]],
) -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    for op, fails in steps:
        store.plan = list(fails)
        before = store.failed
        try:
            if op == "resume":
                await sm.resume()
            elif op == "cancel":
                await sm.cancel()
            elif op == "compensate":
                await sm.compensate()
            elif op == "fail":
                await sm.fail("given up")
            elif op == "boom":
                await sm.dispatch(Event("CHECK", payload="boom"))
            elif op == "bad":
                await sm.dispatch(Event("GO", payload=object()))
            else:
                await sm.dispatch(op)
        except StateMachineError:
            pass
        if store.failed > before or op == "bad":
            await assert_memory_is_the_store(sm, store)
        if sm._stale:
            break


async def test_a_cancel_that_cannot_be_recorded_raises_and_changes_nothing() -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    assert (await sm.dispatch("GO")).success
    store.plan = [True]

    try:
        await sm.cancel()
    except StateMachineError as e:
        assert e.code == ErrorCode.PERSISTENCE_ERROR
    else:
        raise AssertionError("cancel() did not say that it was not recorded")

    assert sm.status == "active"
    await assert_memory_is_the_store(sm, store)
    await sm.cancel()
    assert (await store.load(MID)).status == "cancelled"  # type: ignore[union-attr]
