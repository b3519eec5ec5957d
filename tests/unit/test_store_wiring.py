"""SPEC 3, stores wired into machines: resume without work, the journal, compare-and-set
between machine objects of one id, the seed's callables, config errors, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deploysm import (
    ErrorCode,
    SerializableState,
    StateMachineError,
    create_state_machine,
    effect,
)
from deploysm.stores import MemoryStore

MID = "deploy-1"


class Fx:
    """A scripted effect: ``plan`` says what each call does ("hang", "yield", "fail",
    default "ok"); ``ledger`` records ("start"|"end"|"undo", key, attempt)."""

    def __init__(self) -> None:
        self.ledger: list[tuple[str, str | None, int]] = []
        self.plan: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def execute(self, ctx: Any, state: Any) -> None:
        self.ledger.append(("start", state.idempotency_key, state.attempts))
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "hang":
            self.started.set()
            await self.release.wait()
        elif step == "yield":
            await asyncio.sleep(0)
        elif step == "fail":
            raise RuntimeError(f"attempt {state.attempts} failed")
        ctx["runs"] = ctx.get("runs", 0) + 1
        self.ledger.append(("end", state.idempotency_key, state.attempts))

    def undo(self, ctx: Any, state: Any) -> None:
        self.ledger.append(("undo", state.idempotency_key, state.attempts))

    def build(self, *, idempotent: bool = False) -> Any:
        return effect().execute(self.execute).rollback(self.undo).set_idempotent(idempotent).build()

    def starts(self) -> list[tuple[str, str | None, int]]:
        return [e for e in self.ledger if e[0] == "start"]


async def stored(store: MemoryStore) -> Any:
    snap = await store.load(MID)
    assert snap is not None
    return snap


async def state_of_store(store: MemoryStore) -> tuple[dict[str, Any], list[Any]]:
    return (await stored(store)).to_dict(), await store.journal(MID)


def kinds(journal: list[Any]) -> list[str]:
    return [e.kind for e in journal]


def code_of(outcome: Any) -> str | None:
    """The error code of a dispatch outcome: a failed result or a raised error."""
    if isinstance(outcome, BaseException):
        return getattr(outcome, "code", None)
    return None if outcome.success else getattr(outcome.error, "code", None)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def fx() -> Fx:
    return Fx()


# --- (7) nothing to finish ----------------------------------------------------------------


async def test_resume_with_nothing_stored_leaves_a_new_machine(
    make_config: Any, store: MemoryStore
) -> None:
    sm = create_state_machine(make_config(store=store), {"a": 1}, machine_id=MID)
    assert await sm.resume() is None
    assert sm.get_state().name == "idle" and sm.version == 0 and sm.get_history() == []
    assert sm.get_context() == {"a": 1} and await store.load(MID) is None
    assert (await sm.dispatch("START")).success  # its first write creates the machine


async def test_resume_without_in_flight_restores_everything(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    cfg = make_config(store=store, effects={"validating": fx.build(idempotent=True)})
    a = create_state_machine(cfg, {"env": "prod"}, machine_id=MID)
    assert (await a.dispatch("START")).success
    b = create_state_machine(cfg, {}, machine_id=MID)
    assert await b.resume() is None
    assert len(fx.starts()) == 1
    assert b.get_state() == a.get_state() and b.get_history() == a.get_history()
    assert b.get_context() == {"env": "prod", "runs": 1} and b.version == a.version
    assert (await b.serialize()).to_dict() == (await a.serialize()).to_dict()
    assert (await b.dispatch("VALIDATED")).success  # b's next write fits the store


# --- (8) the journal ---------------------------------------------------------------------


async def test_journal_order_versions_and_final_snapshot(
    make_config: Any, fast_retry: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["fail", "fail"]
    cfg = make_config(store=store, effects={"validating": fx.build()}, retry_policy=fast_retry(3))
    sm = create_state_machine(cfg, {}, machine_id=MID)
    assert (await sm.dispatch("START")).success
    failed_try = ["attempt_failed", "rollback", "retry_scheduled", "attempt"]
    assert kinds(await store.journal(MID)) == ["intent", *failed_try, *failed_try, "committed"]
    assert (await sm.dispatch("VALIDATED")).success
    assert (await sm.dispatch("DEPLOYED")).success
    journal = await store.journal(MID)
    snap = await stored(store)
    versions = [e.version for e in journal]
    assert versions == sorted(versions) and max(versions) <= snap.version
    assert [e.seq for e in journal] == sorted({e.seq for e in journal})
    assert versions[-1] == snap.version and snap.status == "completed"
    assert kinds(journal).count("committed") == 3 and "completed" in kinds(journal)
    assert snap.to_dict() == (await sm.serialize()).to_dict()


async def test_journal_records_a_commit_before_the_completion_it_causes(
    make_config: Any, store: MemoryStore
) -> None:
    sm = create_state_machine(make_config(store=store), {}, machine_id=MID)
    for ev in ("START", "VALIDATED", "DEPLOYED"):
        assert (await sm.dispatch(ev)).success
    assert kinds(await store.journal(MID)) == ["committed", "committed", "committed", "completed"]


# --- (9) two machine objects of one id ----------------------------------------------------


@pytest.mark.parametrize("effect_first", [True, False], ids=["effect-first", "plain-first"])
async def test_concurrent_writers_of_one_id_exactly_one_lands(
    make_config: Any, store: MemoryStore, fx: Fx, effect_first: bool
) -> None:
    fx.plan = ["yield"]  # the effect gives the other writer a chance to run
    cfg = make_config(store=store, effects={"deploying": fx.build(idempotent=True)})
    x = create_state_machine(cfg, {}, machine_id=MID)
    assert (await x.dispatch("START")).success
    y = create_state_machine(cfg, {}, machine_id=MID)
    assert await y.resume() is None and y.version == x.version

    calls = [(x, "VALIDATED"), (y, "FAIL")]  # x's transition has an effect, y's has none
    if not effect_first:
        calls.reverse()
    outcomes = await asyncio.gather(*(m.dispatch(e) for m, e in calls), return_exceptions=True)
    won = [not isinstance(o, BaseException) and o.success for o in outcomes]
    assert sorted(won) == [False, True]
    winner, loser = (calls[0][0], calls[1][0]) if won[0] else (calls[1][0], calls[0][0])
    # x's intent leases the machine to x: while it runs, y is refused for the lease;
    # y's write landing first makes x's intent stale
    refused = ErrorCode.LEASE_HELD if winner is x else ErrorCode.CONFLICT
    assert code_of(outcomes[won.index(False)]) == refused

    snap = await stored(store)
    assert snap.in_flight is None
    assert snap.current_state.name == winner.get_state().name
    assert snap.to_dict() == (await winner.serialize()).to_dict()
    # The effect ran only if its writer won; an intent that could not be written runs nothing.
    assert len(fx.starts()) == (1 if winner is x else 0)

    before = await state_of_store(store)
    for _ in range(2):
        with pytest.raises(StateMachineError) as exc:
            await loser.dispatch("FAIL")
        assert exc.value.code == ErrorCode.CONFLICT
    assert await state_of_store(store) == before
    assert await loser.resume() is None
    assert (await loser.serialize()).to_dict() == snap.to_dict()
    if snap.status == "active":  # x won: the resumed loser writes on top of x's snapshot
        assert (await loser.dispatch("DEPLOYED")).success
        assert (await stored(store)).current_state.name == "completed"


# --- (10) a fresh machine cannot overwrite a stored one ------------------------------------


async def test_fresh_machine_with_stored_id_cannot_overwrite(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    cfg = make_config(store=store, effects={"validating": fx.build()})
    first = create_state_machine(cfg, {"who": "first"}, machine_id=MID)
    assert (await first.dispatch("START")).success
    before = await state_of_store(store)

    fresh = create_state_machine(cfg, {"who": "fresh"}, machine_id=MID)
    result = await fresh.dispatch("START")
    assert not result.success and code_of(result) == ErrorCode.CONFLICT
    assert len(fx.starts()) == 1  # its intent was refused, so its effect never ran
    assert await state_of_store(store) == before
    with pytest.raises(StateMachineError) as exc:
        await fresh.dispatch("START")
    assert exc.value.code == ErrorCode.CONFLICT
    assert await state_of_store(store) == before


async def test_fresh_machine_without_effect_cannot_overwrite(
    make_config: Any, store: MemoryStore
) -> None:
    cfg = make_config(store=store)
    assert (await create_state_machine(cfg, {}, machine_id=MID).dispatch("START")).success
    before = await state_of_store(store)
    fresh = create_state_machine(cfg, {}, machine_id=MID)
    assert code_of(await fresh.dispatch("START")) == ErrorCode.CONFLICT
    assert await state_of_store(store) == before


# --- (11) the seed's persist_state / load_state --------------------------------------------


class JsonSlot:
    """The seed's callables: keep each snapshot's JSON text, load the last one."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def persist(self, snap: SerializableState) -> None:
        self.texts.append(snap.to_json())

    async def load(self) -> str | None:
        return self.texts[-1] if self.texts else None


async def test_seed_callables_drive_resume(make_config: Any, fx: Fx) -> None:
    slot = JsonSlot()
    fx.plan = ["hang"]
    cfg = make_config(
        persist_state=slot.persist,
        load_state=slot.load,
        effects={"validating": fx.build()},
        retry_policy={"max_attempts": 2, "jitter_factor": 0.0},
    )
    a = create_state_machine(cfg, {}, machine_id=MID)
    task = asyncio.create_task(a.dispatch("START"))
    await fx.started.wait()
    flight = SerializableState.from_json(slot.texts[-1]).in_flight
    assert flight is not None and flight.phase == "running"
    key = flight.idempotency_key

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and result.success
    assert fx.ledger == [("start", key, 1), ("undo", key, 1), ("start", key, 2), ("end", key, 2)]
    last = SerializableState.from_json(slot.texts[-1])
    assert last.current_state.name == "validating" and last.in_flight is None
    assert last.to_dict() == (await b.serialize()).to_dict()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_seed_load_state_returning_none_resumes_nothing(make_config: Any) -> None:
    slot = JsonSlot()
    sm = create_state_machine(make_config(persist_state=slot.persist, load_state=slot.load), {})
    assert await sm.resume() is None
    assert sm.get_state().name == "idle" and sm.version == 0 and slot.texts == []


# --- (12) store= and persist_state= together ------------------------------------------------


@pytest.mark.parametrize("callable_name", ["persist_state", "load_state"])
def test_store_plus_seed_callables_is_invalid_config(make_config: Any, callable_name: str) -> None:
    with pytest.raises(StateMachineError) as exc:  # refused when the config is built
        make_config(store=MemoryStore(), **{callable_name: lambda *a: None})
    assert exc.value.code == ErrorCode.INVALID_CONFIG
    cfg = make_config(store=MemoryStore())
    setattr(cfg, callable_name, lambda *a: None)  # or set afterwards: refused when used
    with pytest.raises(StateMachineError) as exc:
        create_state_machine(cfg, {})
    assert exc.value.code == ErrorCode.INVALID_CONFIG


# --- (13) a cancelled machine has nothing to resume -----------------------------------------


async def test_cancelled_machine_stores_no_in_flight_and_resume_does_nothing(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["hang"]
    cfg = make_config(store=store, effects={"validating": fx.build()})
    a = create_state_machine(cfg, {}, machine_id=MID)
    task = asyncio.create_task(a.dispatch("START"))
    await fx.started.wait()
    key = (await stored(store)).in_flight.idempotency_key
    await a.cancel()
    result = await task
    assert not result.success and code_of(result) == ErrorCode.CANCELLED
    assert fx.ledger == [("start", key, 1), ("undo", key, 1)]
    before = await state_of_store(store)
    assert before[0]["status"] == "cancelled" and before[0]["in_flight"] is None

    b = create_state_machine(cfg, {}, machine_id=MID)
    assert await b.resume() is None
    assert b.status == "cancelled" and fx.ledger == [("start", key, 1), ("undo", key, 1)]
    assert await state_of_store(store) == before
    with pytest.raises(StateMachineError) as exc:
        await b.dispatch("START")
    assert exc.value.code == ErrorCode.CANCELLED
