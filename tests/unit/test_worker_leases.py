"""SPEC 4 leases: expiry, renewal, fencing tokens, take-over and resume (SPEC 3), and
state timeouts as durable timers.

These need real time: leases and ``wake_at`` are wall-clock. Leases are 60 ms and the
sleeps a few tens of ms. Every test talks to the store only through the
``RuntimeStore`` protocol (a worker cut off from the store is a proxy in front of it),
so the same tests can run on any store: add it to ``STORES``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

import deploysm
from deploysm import (
    EffectResult,
    ErrorCode,
    Hooks,
    RetryPolicy,
    State,
    StateMachineConfig,
    StateMachineError,
    TimeoutConfig,
    Transition,
    Worker,
    effect,
)
from deploysm.stores import MemoryStore

STORES: dict[str, Callable[[], Any]] = {"memory": MemoryStore}

LEASE_MS = 60
EXPIRED_S = 0.1  # comfortably past one lease
SLOW_POLL_MS = 5_000  # a cut-off worker that does not look for work again meanwhile


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    s = STORES[request.param]()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class CutOff:
    """The store as a cut-off (paused, partitioned) worker sees it: its lease renewals do
    not get through until ``heal()``. Records what it claimed and the errors its writes
    were refused with."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._renewals = asyncio.Event()
        self.save_errors: list[str] = []
        self.claimed: list[str] = []

    def heal(self) -> None:
        self._renewals.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        await self._renewals.wait()
        lost: set[str] = await self._store.renew(worker_id, leases, lease_ms)
        return lost

    async def claim(self, worker_id: str, **kw: Any) -> list[Any]:
        claims: list[Any] = await self._store.claim(worker_id, **kw)
        self.claimed.extend(c.machine_id for c in claims)
        return claims

    async def save(self, snapshot: Any, **kw: Any) -> None:
        try:
            await self._store.save(snapshot, **kw)
        except StateMachineError as e:
            self.save_errors.append(e.code)
            raise


async def eventually(pred: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def finish(worker: Worker, task: asyncio.Task[Any]) -> Any:
    await worker.stop()
    return await asyncio.wait_for(task, 3)


# --- a deployment whose effect is not idempotent and has a rollback --------------------


class Recorder:
    """What every worker's copy of the ``job`` workflow did, as (worker, what, attempt, key)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int, str | None]] = []
        self.inside: list[tuple[str, int]] = []  # (worker, attempt) inside execute now
        self.overlaps: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}  # worker -> gate its execute waits on
        self.rollback_gates: dict[str, asyncio.Event] = {}

    def did(self, worker: str, what: str) -> list[tuple[int, str | None]]:
        return [(a, k) for w, x, a, k in self.log if w == worker and x == what]


def job(rec: Recorder, worker: str) -> StateMachineConfig[Any, Any, Any]:
    """idle --GO--> deployed; the effect waits on ``rec.gates[worker]`` (if any)."""

    async def execute(ctx: Any, state: State[Any]) -> EffectResult:
        if rec.inside:
            rec.overlaps.append(f"{worker} execute {state.attempts} while {rec.inside}")
        rec.log.append((worker, "execute", state.attempts, state.idempotency_key))
        rec.inside.append((worker, state.attempts))
        try:
            gate = rec.gates.get(worker)
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            rec.log.append((worker, "cancelled", state.attempts, state.idempotency_key))
            raise
        finally:
            rec.inside.remove((worker, state.attempts))
        return EffectResult(True, f"deployed by {worker}")

    async def rollback(ctx: Any, state: State[Any]) -> None:
        if rec.inside:
            rec.overlaps.append(f"{worker} rollback {state.attempts} while {rec.inside}")
        rec.log.append((worker, "rollback", state.attempts, state.idempotency_key))
        gate = rec.rollback_gates.get(worker)
        if gate is not None:
            await gate.wait()

    return StateMachineConfig(
        id="job",
        initial_state="idle",
        states=["idle", "deployed"],
        events=["GO"],
        transitions=[Transition(from_="idle", to="deployed", event="GO")],
        effects={"deployed": effect().execute(execute).rollback(rollback).build()},
        retry_policy=RetryPolicy(
            max_attempts=3, initial_delay_ms=1, max_delay_ms=5, jitter_factor=0.0
        ),
    )


def job_worker(store: Any, rec: Recorder, worker_id: str, **kw: Any) -> Worker:
    return Worker(store, {"job": lambda: job(rec, worker_id)}, worker_id=worker_id, **kw)


async def started_job(store: Any, machine: str = "m1") -> None:
    await store.start("job", machine, {})
    await store.send(machine, "GO")


async def journal_kinds(store: Any, machine: str) -> list[str]:
    return [e.kind for e in await store.journal(machine)]


# --- losing a lease -------------------------------------------------------------------


async def test_a_worker_that_lost_its_lease_abandons_the_machine_and_the_new_owner_resumes(
    store: Any,
) -> None:
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()  # a's attempt never finishes on its own
    await started_job(store)
    link = CutOff(store)
    a = job_worker(link, rec, "a", lease_ms=LEASE_MS, poll_ms=SLOW_POLL_MS)
    a_task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: bool(rec.did("a", "execute")))
        [(attempt, key)] = rec.did("a", "execute")
        assert attempt == 1 and key is not None
        await asyncio.sleep(EXPIRED_S)  # a could not renew: its lease expired

        b = job_worker(store, rec, "b")
        assert await b.run_until_idle() == 1

        # SPEC 3: the interrupted non-idempotent attempt is rolled back, then retried with
        # the same idempotency key (the crashed attempt counts).
        assert rec.did("b", "rollback") == [(1, key)]
        assert rec.did("b", "execute") == [(2, key)]
        snap = await store.load("m1")
        assert snap.status == "completed"
        assert snap.current_state.name == "deployed"
        assert snap.current_state.data["message"] == "deployed by b"
        assert snap.in_flight is None
        kinds = await journal_kinds(store, "m1")
        assert "resumed" in kinds
        assert kinds.count("committed") == 1
        journal_before = await store.journal("m1")
        version_before = snap.version

        # a's renewal gets through and reports the lease lost: a gives the machine up.
        link.heal()
        await eventually(lambda: bool(rec.did("a", "cancelled")))
    finally:
        rec.gates["a"].set()
        await finish(a, a_task)

    assert rec.did("a", "rollback") == []  # the abandoned worker rolled nothing back
    assert rec.did("a", "execute") == [(1, key)]
    assert link.save_errors == []  # a did not even try to write after losing the lease
    assert await store.journal("m1") == journal_before
    assert (await store.load("m1")).version == version_before


@pytest.mark.parametrize("new_owner_wrote", [False, True], ids=["before", "after"])
async def test_a_worker_whose_lease_was_taken_cannot_write(
    store: Any, new_owner_wrote: bool
) -> None:
    """The old owner's effect returns after another worker took the machine over: its
    commit is refused with LEASE_LOST ("a save carrying an old token is refused with
    LEASE_LOST"), whether or not the new owner has written since."""
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()
    if not new_owner_wrote:
        rec.rollback_gates["b"] = asyncio.Event()  # b holds the lease, has not written yet
    await started_job(store)
    link = CutOff(store)
    a = job_worker(link, rec, "a", lease_ms=LEASE_MS, poll_ms=SLOW_POLL_MS)
    a_task = asyncio.create_task(a.run())
    b = job_worker(store, rec, "b")
    b_task: asyncio.Task[int] | None = None
    try:
        await eventually(lambda: bool(rec.did("a", "execute")))
        [(_, key)] = rec.did("a", "execute")
        await asyncio.sleep(EXPIRED_S)
        b_task = asyncio.create_task(b.run_until_idle())
        if new_owner_wrote:
            assert await asyncio.wait_for(b_task, 3) == 1
        else:
            await eventually(lambda: bool(rec.did("b", "rollback")))
        before = await store.load("m1")
        journal_before = await store.journal("m1")

        rec.gates["a"].set()  # a's effect returns now: its commit must be refused
        await eventually(lambda: bool(link.save_errors))
        assert link.save_errors == [ErrorCode.LEASE_LOST]
        assert await store.journal("m1") == journal_before
        after = await store.load("m1")
        assert after.version == before.version
        assert after.current_state == before.current_state
    finally:
        rec.gates["a"].set()
        for gate in rec.rollback_gates.values():
            gate.set()
        if b_task is not None:
            await asyncio.wait_for(b_task, 3)
        await finish(a, a_task)

    snap = await store.load("m1")
    assert snap.status == "completed"
    assert snap.current_state.data["message"] == "deployed by b"
    assert rec.did("b", "execute") == [(2, key)]
    assert (await journal_kinds(store, "m1")).count("committed") == 1


@pytest.mark.parametrize("mode", ["run", "run_until_idle"])
async def test_leases_are_renewed_while_a_transition_runs_longer_than_the_lease(
    store: Any, mode: str
) -> None:
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()
    await started_job(store)
    a = job_worker(store, rec, "a", lease_ms=LEASE_MS)
    task = asyncio.create_task(a.run() if mode == "run" else a.run_until_idle())
    try:
        await eventually(lambda: bool(rec.did("a", "execute")))
        await asyncio.sleep(2 * EXPIRED_S)  # several lease lengths
        assert await store.claim("b", limit=10, lease_ms=LEASE_MS) == []
    finally:
        rec.gates["a"].set()
        if mode == "run":
            await eventually(lambda: a.processed == 1)
            await a.stop()
        await asyncio.wait_for(task, 3)

    snap = await store.load("m1")
    assert snap.status == "completed"
    assert snap.current_state.data["message"] == "deployed by a"
    assert rec.log == [("a", "execute", 1, snap.current_state.idempotency_key)]


async def test_a_worker_never_starts_a_second_run_of_a_machine_it_is_still_running(
    store: Any,
) -> None:
    """Its renewals stall past the lease; the machine looks claimable again, but the
    worker's own run of it is still in its effect."""
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()
    await started_job(store)
    link = CutOff(store)
    a = job_worker(link, rec, "a", lease_ms=LEASE_MS, poll_ms=10)
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: bool(rec.did("a", "execute")))
        await asyncio.sleep(2 * EXPIRED_S)  # a polls for work every 10 ms meanwhile
        link.heal()
        rec.gates["a"].set()
        await eventually(lambda: not rec.inside and a.processed >= 1)
    finally:
        rec.gates["a"].set()
        await finish(a, task)

    assert link.claimed.count("m1") >= 2  # the lapse happened: a claimed m1 again
    assert rec.overlaps == []
    assert rec.did("a", "rollback") == []
    assert len(rec.did("a", "execute")) == 1
    snap = await store.load("m1")
    assert snap.status == "completed"


# --- state timeouts are durable timers ---------------------------------------------------


def waiting(errors: list[BaseException]) -> StateMachineConfig[Any, Any, Any]:
    """``waiting`` gives up after 50 ms (system clock): TIMEOUT -> ``timed_out``."""
    return StateMachineConfig(
        id="approval",
        initial_state="waiting",
        states=["waiting", "approved", "timed_out"],
        events=["APPROVE", "TIMEOUT"],
        transitions=[
            Transition(from_="waiting", to="approved", event="APPROVE"),
            Transition(from_="waiting", to="timed_out", event="TIMEOUT"),
        ],
        timeout=TimeoutConfig(state_timeout_ms=50, timeout_event="TIMEOUT"),
        hooks=Hooks(on_error=lambda error, state, ctx: errors.append(error)),
    )


async def test_a_state_timeout_fires_through_the_worker_when_due(store: Any) -> None:
    errors: list[BaseException] = []
    await store.start("approval", "m1", {})
    await store.start("approval", "m2", {})
    await store.send("m2", "APPROVE")
    worker = Worker(store, {"approval": lambda: waiting(errors)}, worker_id="w")

    assert await worker.run_until_idle() == 2
    first = await store.load("m1")
    assert first.current_state.name == "waiting"
    assert first.state_deadline is not None
    assert (await store.load("m2")).current_state.name == "approved"
    assert await worker.run_until_idle() == 0  # not due yet: nothing to claim

    await asyncio.sleep(0.08)  # past the deadline
    # Released machines are left alone until a worker claims them again.
    between = await store.load("m1")
    assert between.version == first.version
    assert between.current_state.name == "waiting"
    assert errors == []

    assert await worker.run_until_idle() == 1
    snap = await store.load("m1")
    assert snap.current_state.name == "timed_out"
    assert snap.current_state.data["event"] == "TIMEOUT"
    assert snap.status == "completed"
    assert len(errors) == 1
    assert isinstance(errors[0], deploysm.TimeoutError)
    assert "committed" in [e.kind for e in await store.journal("m1")]
    assert (await store.load("m2")).current_state.name == "approved"  # untouched
    assert await worker.run_until_idle() == 0
