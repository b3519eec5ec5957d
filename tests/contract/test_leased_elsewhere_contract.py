"""``leased_elsewhere``, on every runtime store: the machines a claim of these workflows
would take but for another worker's live lease, with that worker and when its lease
ends (what a starting worker tells its operator it waits for)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from test_runtime_contract import claim_one

from deploysm import SerializableState

MakeSnapshot = Callable[..., Awaitable[SerializableState]]
LONG = 5_000  # ms: a lease that stays live for the whole test


async def test_lists_machines_with_work_under_another_workers_live_lease(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    before = datetime.now(UTC)
    for workflow, mid in (("wf", "a"), ("wf", "b"), ("other", "c")):
        await rt.start(workflow, mid, {})
    held = {c.machine_id: c.token for c in await rt.claim("w1", limit=10, lease_ms=LONG)}
    assert sorted(held) == ["a", "b", "c"]
    # b has no work left (its start ran), though w1 still holds it
    await rt.save(await make_snapshot("b", version=1), expected_version=0, token=held["b"])
    await rt.start("wf", "mine", {})
    await claim_one(rt, "mine", "me", lease_ms=LONG)
    await rt.start("wf", "gone", {})
    await claim_one(rt, "gone", "w2", lease_ms=100)
    await asyncio.sleep(0.15)  # the lease of gone expires: a claim takes it, no wait
    await rt.start("wf", "free", {})
    after = datetime.now(UTC)

    found = await rt.leased_elsewhere("me", ["wf"])
    assert [(mid, owner) for mid, owner, _ in found] == [("a", "w1")]
    (_, _, until) = found[0]
    assert until.tzinfo is not None
    slack = timedelta(seconds=1)  # PostgreSQL's clock is the server's
    assert before + timedelta(milliseconds=LONG) - slack <= until
    assert until <= after + timedelta(milliseconds=LONG) + slack

    everything = await rt.leased_elsewhere("me", None)
    assert [(mid, owner) for mid, owner, _ in everything] == [("a", "w1"), ("c", "w1")]
    mine = await rt.leased_elsewhere("w1", ["wf", "other"])
    assert [(mid, owner) for mid, owner, _ in mine] == [("mine", "me")]
    assert await rt.leased_elsewhere("me", []) == []
    assert await rt.leased_elsewhere("me", ["nothing"]) == []


async def test_a_released_or_finished_machine_is_not_waited_for(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    await rt.start("wf", "n", {})
    held = {c.machine_id: c.token for c in await rt.claim("w1", limit=10, lease_ms=LONG)}
    assert [mid for mid, _, _ in await rt.leased_elsewhere("w2", ["wf"])] == ["m", "n"]
    assert await rt.release("m", held["m"], wake_at=None)  # free again: claimable
    done = await make_snapshot("n", version=1, status="completed")
    await rt.save(done, expected_version=0, token=held["n"])
    assert await rt.leased_elsewhere("w2", ["wf"]) == []
