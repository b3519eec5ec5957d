"""The lease of a machine run without a worker, on every runtime store (``save(...,
lease=Lease(owner, ms))``): the save of an intent (a transition in flight) takes the
lease and returns the fencing token; saves carrying that token keep it; the save that
clears the intent frees it. While it is live, nobody else (no token) may write:
``LEASE_HELD``, nothing written; once it expired, a take-over bumps the token, and the
old owner's late save is ``LEASE_LOST``. Real time only where a lease must expire.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from test_runtime_contract import claim_one, rec

from deploysm import ErrorCode, Event, SerializableState, StateMachineError
from deploysm.durable._snapshot import InFlight
from deploysm.stores._runtime import Lease, LeaseHeld

MakeSnapshot = Callable[..., Awaitable[SerializableState]]
LONG = 5_000  # ms: a lease that stays live for the whole test
SHORT = 100  # ms: one that is let expire


def _flight() -> InFlight:
    at = datetime(2024, 5, 1, tzinfo=UTC)
    return InFlight("idle", "validating", Event("START", None, at), 0, 1, "m:1:k", at)


async def intent(make_snapshot: MakeSnapshot, version: int, **kw: Any) -> SerializableState:
    """A snapshot of ``m`` with a transition in flight."""
    snap = await make_snapshot("m", version=version, **kw)
    return dataclasses.replace(snap, in_flight=_flight())


async def settled(make_snapshot: MakeSnapshot, version: int) -> SerializableState:
    return await make_snapshot("m", version=version, steps=1)


async def test_an_intent_takes_the_lease_a_settled_save_frees_it(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    t1 = await rt.save(
        await intent(make_snapshot, 1), expected_version=None, lease=Lease("a", LONG)
    )
    assert isinstance(t1, int)
    assert await rt.claim("w", limit=5, lease_ms=LONG) == []  # no worker takes it either
    # the holder goes on with its token: the lease is kept, the token unchanged
    t = await rt.save(
        await intent(make_snapshot, 2), expected_version=1, token=t1, lease=Lease("a", LONG)
    )
    assert t == t1
    assert await rt.renew("a", {"m": t1}, LONG) == set()
    with pytest.raises(LeaseHeld) as info:  # anyone else is refused while it is live
        await rt.save(await intent(make_snapshot, 3), expected_version=2, lease=Lease("b", LONG))
    assert info.value.code == ErrorCode.LEASE_HELD and info.value.holder == "a"
    with pytest.raises(StateMachineError) as plain:  # a save without a lease, as before
        await rt.save(await settled(make_snapshot, 3), expected_version=2)
    assert plain.value.code == ErrorCode.LEASE_LOST
    # the save that clears the intent frees the lease
    await rt.save(
        await settled(make_snapshot, 3), expected_version=2, token=t1, lease=Lease("a", LONG)
    )
    assert await rt.renew("a", {"m": t1}, LONG) == {"m"}
    t2 = await rt.save(await intent(make_snapshot, 4), expected_version=3, lease=Lease("b", LONG))
    assert t2 is not None and t2 > t1


async def test_refused_take_over_writes_nothing(rt: Any, make_snapshot: MakeSnapshot) -> None:
    first = await intent(make_snapshot, 1)
    await rt.save(first, expected_version=None, journal=[rec("intent")], lease=Lease("a", LONG))
    before = (await rt.list(), await rt.journal("m"))
    with pytest.raises(LeaseHeld):
        await rt.save(
            await intent(make_snapshot, 2),
            expected_version=1,
            journal=[rec("resumed")],
            lease=Lease("b", LONG),
        )
    loaded = await rt.load("m")
    assert loaded is not None and loaded.to_dict() == first.to_dict()
    assert (await rt.list(), await rt.journal("m")) == before
    with pytest.raises(LeaseHeld):  # the lease is checked before the version
        await rt.save(await intent(make_snapshot, 9), expected_version=7, lease=Lease("b", LONG))


async def test_after_expiry_a_take_over_fences_the_old_owner_out(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    t1 = await rt.save(
        await intent(make_snapshot, 1), expected_version=None, lease=Lease("a", SHORT)
    )
    await asyncio.sleep(SHORT * 1.5 / 1000)
    t2 = await rt.save(await intent(make_snapshot, 2), expected_version=1, lease=Lease("b", LONG))
    assert t2 is not None and t1 is not None and t2 > t1
    assert await rt.renew("a", {"m": t1}, LONG) == {"m"}  # the old owner's heartbeat fails
    for late in (await settled(make_snapshot, 2), await settled(make_snapshot, 3)):
        with pytest.raises(StateMachineError) as info:  # its late commit, at any version
            await rt.save(late, expected_version=late.version - 1, token=t1, lease=Lease("a", 1))
        assert info.value.code == ErrorCode.LEASE_LOST
    loaded = await rt.load("m")
    assert loaded is not None and loaded.version == 2 and loaded.in_flight is not None


async def test_a_dead_owner_may_be_evicted_before_expiry(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    t1 = await rt.save(
        await intent(make_snapshot, 1), expected_version=None, lease=Lease("a", LONG)
    )
    with pytest.raises(LeaseHeld):  # evicting someone else than the holder changes nothing
        await rt.save(
            await intent(make_snapshot, 2), expected_version=1, lease=Lease("b", LONG, evict="x")
        )
    t2 = await rt.save(
        await intent(make_snapshot, 2), expected_version=1, lease=Lease("b", LONG, evict="a")
    )
    assert t2 is not None and t1 is not None and t2 > t1
    with pytest.raises(StateMachineError) as info:
        await rt.save(await settled(make_snapshot, 3), expected_version=2, token=t1)
    assert info.value.code == ErrorCode.LEASE_LOST


async def test_a_worker_lease_and_a_machine_lease_exclude_each_other(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    token = await claim_one(rt, "m", "w1", lease_ms=LONG)
    with pytest.raises(LeaseHeld) as info:
        await rt.save(await intent(make_snapshot, 1), expected_version=0, lease=Lease("a", LONG))
    assert info.value.holder == "w1"
    assert await rt.release("m", token, wake_at=None)
    t = await rt.save(await intent(make_snapshot, 1), expected_version=0, lease=Lease("a", LONG))
    assert t is not None and t > token
    assert await rt.claim("w1", limit=5, lease_ms=LONG) == []  # busy, but leased by "a"
