"""Two owners of one machine id without a worker (two processes, seen in-process): the
intent write leases the machine to the machine object that runs the effect.

A runs START's non-idempotent effect; B, another machine object with the same id and
store (as another process would build it), calls ``resume()`` or ``resolve()``. While
A's lease is live, B is refused with ``LEASE_HELD`` and nothing changes, in B or in
the store; once it expired (A stopped renewing it), B takes over and A's late commit
is refused. The store's lease clock is the test's virtual clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lease_owners import dead_owner

from deploysm import ErrorCode, StateMachineError, create_state_machine, effect
from deploysm.engine._lease import new_owner
from deploysm.stores import MemoryStore
from deploysm.testing import VirtualClock

MID = "ship-1"
LEASE_MS = 30_000


class Ship:
    """A non-idempotent effect that waits for ``gate`` (or ``seconds`` of the clock);
    ``ledger`` counts runs and rollbacks."""

    def __init__(self, clock: VirtualClock, seconds: float | None = None) -> None:
        self.clock = clock
        self.seconds = seconds
        self.ledger: list[str] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def execute(self, ctx: Any, state: Any) -> None:
        self.ledger.append("run")
        self.started.set()
        if self.seconds is None:
            await self.gate.wait()
        else:
            await self.clock.sleep(self.seconds)

    def undo(self, ctx: Any, state: Any) -> None:
        self.ledger.append("undo")


@pytest.fixture
def store(clock: VirtualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def config(make_config: Any, store: MemoryStore, ship: Ship, rollback: bool = True) -> Any:
    b = effect().execute(ship.execute)
    if rollback:
        b = b.rollback(ship.undo)
    return make_config(store=store, effects={"validating": b.build()}, lease_ms=LEASE_MS)


async def start_a(cfg: Any, ship: Ship, owner: str | None = None) -> asyncio.Task[Any]:
    """A (with lease owner id ``owner``, if given) dispatches START; its effect runs."""
    a = create_state_machine(cfg, {}, machine_id=MID)
    if owner is not None:
        a._lease_owner = owner
    running = asyncio.create_task(a.dispatch("START"))
    await ship.started.wait()
    return running


async def store_state(store: MemoryStore) -> Any:
    snap = await store.load(MID)
    return None if snap is None else snap.to_dict(), await store.journal(MID)


async def test_resume_while_the_owner_runs_the_effect_is_refused_and_changes_nothing(
    make_config: Any, store: MemoryStore, clock: VirtualClock
) -> None:
    ship = Ship(clock)
    cfg = config(make_config, store, ship)
    running = await start_a(cfg, ship)
    b = create_state_machine(cfg, {"b": 1}, machine_id=MID)
    b_before, before = b.snapshot().to_dict(), await store_state(store)

    with pytest.raises(StateMachineError) as info:
        await b.resume()
    assert info.value.code == ErrorCode.LEASE_HELD
    assert b.snapshot().to_dict() == b_before
    assert await store_state(store) == before

    ship.gate.set()
    result = await running
    assert result.success and result.new_state.name == "validating"
    assert ship.ledger == ["run"]  # once, never rolled back
    assert await b.resume() is None  # settled now: b loads it
    assert b.get_state().name == "validating"


async def test_the_heartbeat_keeps_the_lease_live_through_a_long_effect(
    make_config: Any, store: MemoryStore, clock: VirtualClock
) -> None:
    ship = Ship(clock, seconds=5 * LEASE_MS / 1000)  # five lease lengths
    cfg = config(make_config, store, ship)
    running = await start_a(cfg, ship)
    for _ in range(4):
        await clock.sleep(LEASE_MS / 1000)
        with pytest.raises(StateMachineError) as info:
            await create_state_machine(cfg, {}, machine_id=MID).resume()
        assert info.value.code == ErrorCode.LEASE_HELD
    assert (await running).success
    assert ship.ledger == ["run"]


async def test_after_the_lease_expired_resume_takes_over_and_the_old_owner_is_fenced_out(
    make_config: Any, store: MemoryStore, clock: VirtualClock, monkeypatch: Any
) -> None:
    ship = Ship(clock)
    cfg = config(make_config, store, ship)
    hang = asyncio.Event()
    monkeypatch.setattr(store, "renew", lambda *args: hang.wait())  # A cannot renew
    running = await start_a(cfg, ship)
    await clock.sleep(LEASE_MS / 1000 + 1)

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()  # rolled back, then failed: no retry policy
    assert result is not None and not result.success
    assert ship.ledger == ["run", "undo"]
    settled = await store_state(store)

    ship.gate.set()  # A's effect returns; its commit must not land
    late = await running
    assert not late.success and late.error is not None
    assert late.error.code == ErrorCode.LEASE_LOST
    assert await store_state(store) == settled
    stored = await store.load(MID)
    assert stored is not None and stored.current_state.name == "idle"
    assert stored.in_flight is None


async def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(
    make_config: Any, store: MemoryStore, clock: VirtualClock
) -> None:
    ship = Ship(clock)
    cfg = config(make_config, store, ship)
    dead = dead_owner()  # as a killed process would have left it
    running = await start_a(cfg, ship, dead)

    b = create_state_machine(cfg, {}, machine_id=MID)
    result = await b.resume()
    assert result is not None and not result.success
    assert ship.ledger == ["run", "undo"]
    ship.gate.set()
    late = await running
    assert late.error is not None and late.error.code == ErrorCode.LEASE_LOST
    assert not dead.startswith(new_owner().rpartition("/")[0])  # not this process


async def test_resolve_while_another_owner_runs_the_retry_is_refused(
    make_config: Any, store: MemoryStore, clock: VirtualClock, monkeypatch: Any
) -> None:
    ship = Ship(clock)
    cfg = config(make_config, store, ship, rollback=False)
    # park the machine: a crashed attempt of an effect without rollback
    crashed = await start_a(cfg, ship)
    hang = asyncio.Event()
    monkeypatch.setattr(store, "renew", lambda *args: hang.wait())  # its heartbeat stalls
    await clock.sleep(LEASE_MS / 1000 + 1)
    monkeypatch.undo()
    a = create_state_machine(cfg, {}, machine_id=MID)
    b = create_state_machine(cfg, {}, machine_id=MID)
    parked = await a.resume()
    assert parked is not None and parked.error is not None
    assert parked.error.code == ErrorCode.NEEDS_ATTENTION
    assert await b.resume() is None and b.status == "needs_attention"
    crashed.cancel()
    await asyncio.gather(crashed, return_exceptions=True)

    ship.gate = asyncio.Event()
    ship.started.clear()
    retry = asyncio.create_task(a.resolve("retry", by="ops"))
    await ship.started.wait()
    b_before, before = b.snapshot().to_dict(), await store_state(store)
    for action in ("retry", "mark_succeeded", "mark_failed"):
        with pytest.raises(StateMachineError) as info:
            await b.resolve(action, by="other")  # type: ignore[arg-type]
        assert info.value.code == ErrorCode.LEASE_HELD
        assert b.snapshot().to_dict() == b_before and b.status == "needs_attention"
        assert await store_state(store) == before
    ship.gate.set()
    assert (await retry).success
    assert ship.ledger == ["run", "run"]  # the crashed attempt, then a's retry: no other


def test_lease_ms_is_checked(make_config: Any) -> None:
    for bad in (0, 29, -1, 1.5, "30000", True):
        with pytest.raises(StateMachineError) as info:
            create_state_machine(make_config(lease_ms=bad), {})
        assert info.value.code == ErrorCode.INVALID_CONFIG


async def test_resume_that_finds_the_owner_finished_meanwhile_loads_the_result(
    make_config: Any, store: MemoryStore, clock: VirtualClock, monkeypatch: Any
) -> None:
    ship = Ship(clock)
    cfg = config(make_config, store, ship)
    running = await start_a(cfg, ship)
    load = store.load

    async def slow_load(machine_id: str) -> Any:  # A commits between B's load and take-over
        snap = await load(machine_id)
        monkeypatch.undo()
        ship.gate.set()
        assert (await running).success
        return snap

    monkeypatch.setattr(store, "load", slow_load)
    b = create_state_machine(cfg, {}, machine_id=MID)
    assert await b.resume() is None  # nothing in flight any more: nothing to take over
    assert (
        b.get_state().name == "validating" and b.version == (await store_state(store))[0]["version"]
    )
    assert ship.ledger == ["run"]
