"""SPEC 3, resume and resolve: a crash is simulated in-process on a MemoryStore.

Machine A runs an effect that hangs (its intent is durable, ``phase="running"``), then
machine B is built from the same definition and machine id, as a new process would
be, and ``await B.resume()`` finishes the work. A is abandoned; whatever it does
afterwards must not change the store.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from lease_owners import dead_owner

from deploysm import (
    EffectError,
    ErrorCode,
    RetryExhaustedError,
    StateMachineError,
    create_state_machine,
    effect,
)
from deploysm.stores import MemoryStore
from deploysm.testing import VirtualClock

MID = "deploy-1"


class Fx:
    """A scripted effect: ``plan`` says what each call does ("hang", "fail", default
    "ok"); ``ledger`` records ("start"|"end"|"undo", key, attempt)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.ledger: list[tuple[str, str | None, int]] = []
        self.times: list[float] = []  # virtual time at each start
        self.plan: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def execute(self, ctx: Any, state: Any) -> None:
        self.ledger.append(("start", state.idempotency_key, state.attempts))
        self.times.append(self.clock.elapsed)
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "hang":
            self.started.set()
            await self.release.wait()
        elif step == "fail":
            raise RuntimeError(f"attempt {state.attempts} failed")
        ctx["runs"] = ctx.get("runs", 0) + 1
        self.ledger.append(("end", state.idempotency_key, state.attempts))

    def undo(self, ctx: Any, state: Any) -> None:
        self.ledger.append(("undo", state.idempotency_key, state.attempts))

    def build(
        self, *, idempotent: bool = False, rollback: bool = True, reconcile: Any = None
    ) -> Any:
        b = effect().execute(self.execute).set_idempotent(idempotent)
        if rollback:
            b = b.rollback(self.undo)
        if reconcile is not None:
            b = b.reconcile(reconcile)
        return b.build()

    def starts(self) -> list[tuple[str, str | None, int]]:
        return [e for e in self.ledger if e[0] == "start"]


class StuckClock:
    """A's clock once it has "crashed": same time as ``clock``, but sleeps never end;
    ``sleeping`` is set once a sleep of at least ``over`` seconds began (the retry
    delay; the lease heartbeat sleeps a third of the lease)."""

    def __init__(self, clock: VirtualClock, over: float) -> None:
        self.clock = clock
        self.over = over
        self.sleeping = asyncio.Event()

    def now(self) -> Any:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        if seconds >= self.over:
            self.sleeping.set()
        await asyncio.Event().wait()


async def stored(store: MemoryStore) -> Any:
    snap = await store.load(MID)
    assert snap is not None
    return snap


async def state_of_store(store: MemoryStore) -> tuple[dict[str, Any], list[Any]]:
    return (await stored(store)).to_dict(), await store.journal(MID)


async def crash(cfg: Any, fx: Any, ctx: Any = None) -> tuple[Any, asyncio.Task[Any]]:
    """Start A's dispatch of START and wait until its effect hangs. A "crashed": its
    lease is owned by a process of this host that no longer exists, so B's
    ``resume()`` takes it over at once (A's late writes are fenced out)."""
    a = create_state_machine(cfg, {} if ctx is None else ctx, machine_id=MID)
    a._lease_owner = dead_owner()
    task = asyncio.create_task(a.dispatch("START"))
    await fx.started.wait()
    return a, task


async def abandon(task: asyncio.Task[Any], store: MemoryStore) -> None:
    """Cancel the crashed A; nothing it does now may change the store."""
    before = await state_of_store(store)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await state_of_store(store) == before


def kinds(journal: list[Any]) -> list[str]:
    return [e.kind for e in journal]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def fx(clock: VirtualClock) -> Fx:
    return Fx(clock)


# --- (1) idempotent: run again, same key ---------------------------------------------


async def test_idempotent_in_flight_reruns_with_same_key_and_commits(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["hang"]
    cfg = make_config(store=store, effects={"validating": fx.build(idempotent=True)})
    _a, task = await crash(cfg, fx)
    flight = (await stored(store)).in_flight
    assert flight is not None and flight.phase == "running" and flight.attempt == 1
    key = flight.idempotency_key

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and result.success and result.new_state.name == "validating"
    assert [e[:2] for e in fx.ledger] == [("start", key), ("start", key), ("end", key)]
    assert b.get_state().idempotency_key == key
    snap = await stored(store)
    assert snap.current_state.name == "validating" and snap.in_flight is None
    assert snap.status == "active" and snap.context == {"runs": 1}
    assert snap.to_dict() == (await b.serialize()).to_dict()
    assert "resumed" in kinds(await store.journal(MID))

    # A wakes up after B took over: its commit is refused (B's take-over fenced it
    # out), the store keeps B's write.
    before = await state_of_store(store)
    fx.release.set()
    late = await task
    assert not late.success and late.error is not None
    assert late.error.code == ErrorCode.LEASE_LOST
    assert await state_of_store(store) == before


# --- (2), (3) non-idempotent with rollback ---------------------------------------------


async def test_non_idempotent_is_rolled_back_then_retried_as_next_attempt(
    make_config: Any, fast_retry: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["hang"]
    cfg = make_config(store=store, effects={"validating": fx.build()}, retry_policy=fast_retry(3))
    _a, task = await crash(cfg, fx)
    key = (await stored(store)).in_flight.idempotency_key

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and result.success and b.get_state().name == "validating"
    assert fx.ledger == [("start", key, 1), ("undo", key, 1), ("start", key, 2), ("end", key, 2)]
    assert b.get_state().attempts == 2 and b.get_state().idempotency_key == key
    journal = kinds(await store.journal(MID))
    tail = journal[journal.index("resumed") :]
    assert tail == ["resumed", "rollback", "attempt", "committed"]
    await abandon(task, store)


async def test_crash_in_last_allowed_attempt_rolls_back_and_fails(
    make_config: Any, fast_retry: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["fail", "hang"]  # attempt 1 fails for real, attempt 2 is cut by the crash
    cfg = make_config(store=store, effects={"validating": fx.build()}, retry_policy=fast_retry(2))
    _a, task = await crash(cfg, fx)
    flight = (await stored(store)).in_flight
    assert flight.attempt == 2 and flight.phase == "running"
    key = flight.idempotency_key

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and not result.success
    assert isinstance(result.error, RetryExhaustedError) and result.error.attempts == 2
    assert isinstance(result.error.__cause__, EffectError)
    assert fx.ledger == [("start", key, 1), ("undo", key, 1), ("start", key, 2), ("undo", key, 2)]
    snap = await stored(store)
    assert snap.current_state.name == "idle" and snap.status == "active"
    assert snap.in_flight is None and snap.last_error is not None
    assert b.status == "active" and b.get_state().name == "idle"
    assert kinds(await store.journal(MID))[-1] == "failed"
    await abandon(task, store)

    # A new dispatch is a new logical step, with a new idempotency key.
    again = await b.dispatch("START")
    assert again.success and fx.starts()[-1][1] not in (None, key)


async def test_crash_without_retry_policy_rolls_back_and_fails_with_effect_error(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["hang"]
    cfg = make_config(store=store, effects={"validating": fx.build()})
    _a, task = await crash(cfg, fx)
    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and not result.success
    assert isinstance(result.error, EffectError)
    assert [e[0] for e in fx.ledger] == ["start", "undo"]
    snap = await stored(store)
    assert snap.current_state.name == "idle" and snap.in_flight is None
    await abandon(task, store)


# --- (4) non-idempotent without rollback: park, then resolve --------------------------


async def park(make_config: Any, store: MemoryStore, fx: Fx, **kw: Any) -> tuple[Any, Any, str]:
    """Crash a rollback-less non-idempotent effect and resume: B is parked."""
    fx.plan = ["hang"]
    eff = fx.build(rollback=False, **kw)
    cfg = make_config(store=store, effects={"validating": eff})
    _a, task = await crash(cfg, fx)
    key = (await stored(store)).in_flight.idempotency_key
    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and not result.success
    assert getattr(result.error, "code", None) == ErrorCode.NEEDS_ATTENTION
    await abandon(task, store)
    return b, result, key


async def test_rollbackless_effect_parks_and_is_not_rerun(
    make_config: Any, store: MemoryStore, fx: Fx, clock: VirtualClock
) -> None:
    b, _result, key = await park(make_config, store, fx)
    assert fx.starts() == [("start", key, 1)]
    assert b.status == "needs_attention" and b.get_state().name == "idle"
    snap = await stored(store)
    assert snap.status == "needs_attention" and snap.in_flight is not None
    assert "needs_attention" in kinds(await store.journal(MID))
    with pytest.raises(StateMachineError) as exc:
        await b.dispatch("START")
    assert exc.value.code == ErrorCode.NEEDS_ATTENTION
    # Another process resuming the parked machine runs nothing either.
    c = create_state_machine(make_config(store=store, effects=b.config.effects), {}, MID)
    assert await c.resume() is None and c.status == "needs_attention"
    assert fx.starts() == [("start", key, 1)]


async def test_resolve_retry_runs_once_more_at_once_with_same_key(
    make_config: Any, store: MemoryStore, fx: Fx, clock: VirtualClock
) -> None:
    b, _, key = await park(make_config, store, fx)
    t0 = clock.elapsed
    result = await b.resolve("retry", by="alice", reason="checked the API")
    assert result is not None and result.success and b.get_state().name == "validating"
    assert [e[:2] for e in fx.ledger] == [("start", key), ("start", key), ("end", key)]
    assert fx.times[-1] == t0  # no retry delay
    snap = await stored(store)
    assert snap.status == "active" and snap.in_flight is None
    assert snap.current_state.name == "validating" and snap.current_state.idempotency_key == key
    rec = [e for e in await store.journal(MID) if e.kind == "resolved"]
    assert [dict(e.data) for e in rec] == [
        {"action": "retry", "by": "alice", "reason": "checked the API"}
    ]


async def test_resolve_mark_succeeded_commits_without_running(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    b, _, key = await park(make_config, store, fx)
    result = await b.resolve("mark_succeeded", by="bob", reason="it worked")
    assert result is not None and result.success
    assert fx.starts() == [("start", key, 1)]
    snap = await stored(store)
    assert snap.current_state.name == "validating" and snap.status == "active"
    assert snap.in_flight is None and snap.history[-1].name == "idle"
    journal = await store.journal(MID)
    assert kinds(journal)[-2:] == ["resolved", "committed"]
    assert journal[-2].data["by"] == "bob" and journal[-2].data["reason"] == "it worked"


async def test_resolve_mark_failed_records_failure_without_running(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    b, _, key = await park(make_config, store, fx)
    result = await b.resolve("mark_failed", by="carol", reason="gave up")
    assert result is not None and not result.success
    assert fx.starts() == [("start", key, 1)]
    snap = await stored(store)
    assert snap.current_state.name == "idle" and snap.status == "active"
    assert snap.in_flight is None and snap.last_error is not None
    assert "gave up" in snap.last_error["message"]
    journal = await store.journal(MID)
    assert kinds(journal)[-2:] == ["resolved", "failed"]
    assert journal[-2].data["by"] == "carol"
    assert (await b.dispatch("START")).success  # active again


async def test_resolve_refuses_active_machine_and_unknown_action(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    active = create_state_machine(make_config(store=store), {}, machine_id="other")
    with pytest.raises(StateMachineError) as exc:
        await active.resolve("retry")
    assert exc.value.code == ErrorCode.NOT_PARKED
    b, _, _ = await park(make_config, store, fx)
    before = await state_of_store(store)
    with pytest.raises(StateMachineError) as exc:
        await b.resolve("bogus")
    assert exc.value.code == ErrorCode.INVALID_ACTION
    assert b.status == "needs_attention" and await state_of_store(store) == before


# --- (5) reconcile ----------------------------------------------------------------------


async def test_reconcile_done_commits_without_rerun(
    make_config: Any, store: MemoryStore, fx: Fx
) -> None:
    asked: list[Any] = []

    def check(ctx: Any, state: Any) -> str:
        asked.append((state.name, state.idempotency_key))
        return "done"

    fx.plan = ["hang"]
    cfg = make_config(
        store=store, effects={"validating": fx.build(rollback=False, reconcile=check)}
    )
    _a, task = await crash(cfg, fx)
    key = (await stored(store)).in_flight.idempotency_key
    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and result.success and b.get_state().name == "validating"
    assert asked == [("validating", key)] and fx.starts() == [("start", key, 1)]
    assert (await stored(store)).in_flight is None
    await abandon(task, store)


async def test_reconcile_not_done_reruns(make_config: Any, store: MemoryStore, fx: Fx) -> None:
    fx.plan = ["hang"]
    eff = fx.build(rollback=False, reconcile=lambda c, s: "not_done")
    cfg = make_config(store=store, effects={"validating": eff})
    _a, task = await crash(cfg, fx)
    key = (await stored(store)).in_flight.idempotency_key
    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and result.success
    assert [e[:2] for e in fx.ledger] == [("start", key), ("start", key), ("end", key)]
    await abandon(task, store)


def _raises(ctx: Any, state: Any) -> str:
    raise RuntimeError("inventory API down")


@pytest.mark.parametrize("verdict", [lambda c, s: "unknown", _raises], ids=["unknown", "raises"])
async def test_reconcile_unknown_or_raising_falls_back_to_parking(
    make_config: Any, store: MemoryStore, fx: Fx, verdict: Any
) -> None:
    b, _, key = await park(make_config, store, fx, reconcile=verdict)
    assert fx.starts() == [("start", key, 1)] and b.status == "needs_attention"


async def test_reconcile_unknown_falls_back_to_rollback_and_retry(
    make_config: Any, fast_retry: Any, store: MemoryStore, fx: Fx
) -> None:
    fx.plan = ["hang"]
    eff = fx.build(reconcile=_raises)
    cfg = make_config(store=store, effects={"validating": eff}, retry_policy=fast_retry(3))
    _a, task = await crash(cfg, fx)
    key = (await stored(store)).in_flight.idempotency_key
    result = await create_state_machine(cfg, {}, machine_id=MID).resume()
    assert result is not None and result.success
    assert fx.ledger == [("start", key, 1), ("undo", key, 1), ("start", key, 2), ("end", key, 2)]
    assert "reconcile_failed" in kinds(await store.journal(MID))
    await abandon(task, store)


# --- (6) a retry delay continues from its recorded deadline ------------------------------


@pytest.mark.parametrize(("down_for", "next_at"), [(20.0, 60.0), (100.0, 100.0)])
async def test_retry_wait_resumes_at_recorded_deadline(
    make_config: Any,
    fast_retry: Any,
    store: MemoryStore,
    fx: Fx,
    clock: VirtualClock,
    down_for: float,
    next_at: float,
) -> None:
    fx.plan = ["fail"]
    policy = fast_retry(3, initial_delay_ms=60_000.0, max_delay_ms=120_000.0)
    effects = {"validating": fx.build()}
    stuck = StuckClock(clock, over=60)
    a = create_state_machine(
        make_config(store=store, effects=effects, retry_policy=policy, clock=stuck), {}, MID
    )
    a._lease_owner = dead_owner()  # A's process "dies" below
    task = asyncio.create_task(a.dispatch("START"))
    await stuck.sleeping.wait()  # A "dies" inside its 60 s retry delay
    flight = (await stored(store)).in_flight
    assert flight.phase == "retry_wait" and flight.attempt == 2
    assert flight.next_retry_at == clock.now() + timedelta(seconds=60)
    key = flight.idempotency_key

    clock.advance(down_for)  # the new process starts this much later
    cfg = make_config(store=store, effects=effects, retry_policy=policy)
    result = await create_state_machine(cfg, {}, MID).resume()
    assert result is not None and result.success
    assert fx.ledger == [("start", key, 1), ("undo", key, 1), ("start", key, 2), ("end", key, 2)]
    assert fx.times == [0.0, next_at]
    await abandon(task, store)
