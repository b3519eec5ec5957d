"""The ``RuntimeStore`` contract (what a worker relies on), run on every runtime store.

Starts, inboxes (ordered, de-duplicated by event id), claims with leases and fencing
tokens, timers, and the lease rules of ``save``. To put another store under it, add one
``RuntimeKind`` to ``RUNTIME_KINDS``. Leases are short (``LEASE`` ms); real time is
spent only where a lease must expire or a timer come due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deploysm import ErrorCode, Event, SerializableState, StateMachineError
from deploysm.durable._snapshot import InFlight
from deploysm.stores import JournalRecord
from deploysm.stores._runtime import RuntimeStore

MakeSnapshot = Callable[..., Awaitable[SerializableState]]
LEASE = 200  # ms


def rec(kind: str) -> JournalRecord:
    return JournalRecord(kind, datetime(2024, 5, 1, tzinfo=UTC), {"k": kind})


async def saved(rt: Any, make_snapshot: MakeSnapshot, mid: str, **kw: Any) -> SerializableState:
    """A machine saved directly at version 1 (no lease, no pending work)."""
    snap = await make_snapshot(mid, version=1, **kw)
    await rt.save(snap, expected_version=None, workflow="wf")
    return snap


async def claim_one(rt: Any, mid: str, worker: str = "w1", lease_ms: int = LEASE) -> int:
    claims = await rt.claim(worker, limit=10, lease_ms=lease_ms)
    assert [c.machine_id for c in claims] == [mid]
    token: int = claims[0].token
    return token


# ------------------------------------------------------------------- start / send


async def test_satisfies_runtime_protocol(rt: Any) -> None:
    assert isinstance(rt, RuntimeStore)


async def test_start_then_claim_gives_the_start_context(rt: Any) -> None:
    await rt.start("deploy", "m", {"service": "api", "replicas": 3, "tags": ["a", "b"]})
    assert await rt.load("m") is None
    (info,) = await rt.list()
    assert (info.machine_id, info.workflow, info.status, info.version) == (
        "m",
        "deploy",
        "active",
        0,
    )
    (claim,) = await rt.claim("w1", limit=5, lease_ms=LEASE)
    assert (claim.machine_id, claim.workflow, claim.snapshot) == ("m", "deploy", None)
    assert claim.context == {"service": "api", "replicas": 3, "tags": ["a", "b"]}
    assert list(claim.context) == ["service", "replicas", "tags"]  # given order kept
    assert claim.token >= 1 and claim.cancel_requested is False


async def test_start_of_an_existing_id_conflicts(rt: Any, make_snapshot: MakeSnapshot) -> None:
    await rt.start("wf", "m", {})
    await saved(rt, make_snapshot, "s")
    for mid in ("m", "s"):
        with pytest.raises(StateMachineError) as info:
            await rt.start("wf", mid, {})
        assert info.value.code == ErrorCode.CONFLICT


async def test_start_refuses_a_context_json_cannot_hold(rt: Any) -> None:
    with pytest.raises(StateMachineError) as info:
        await rt.start("wf", "m", {"x": object()})
    assert info.value.code == ErrorCode.INVALID_CONTEXT
    assert await rt.list() == []


@pytest.mark.parametrize("context", [[1, 2], "text", 3, None, True])
async def test_start_refuses_a_context_that_is_not_a_json_object(rt: Any, context: Any) -> None:
    # a worker runs the machine with a dict context: anything else could never run
    with pytest.raises(StateMachineError) as info:
        await rt.start("wf", "m", context)
    assert info.value.code == ErrorCode.INVALID_CONTEXT
    assert "JSON object" in info.value.message
    assert await rt.list() == []


async def test_start_takes_a_dataclass_context_as_its_fields(rt: Any) -> None:
    @dataclass
    class Ctx:
        app: str

    await rt.start("wf", "m", Ctx("web"))
    (claim,) = await rt.claim("w1", limit=1, lease_ms=LEASE)
    assert claim.context == {"app": "web"}


async def test_worker_first_save_expects_version_zero(rt: Any, make_snapshot: MakeSnapshot) -> None:
    await rt.start("wf", "m", {"n": 1})
    token = await claim_one(rt, "m")
    snap = await make_snapshot("m", version=1)
    with pytest.raises(StateMachineError) as info:
        await rt.save(snap, expected_version=None, token=token)
    assert info.value.code == ErrorCode.CONFLICT and "already exists" in info.value.message
    await rt.save(snap, expected_version=0, journal=[rec("started")], token=token)
    loaded = await rt.load("m")
    assert loaded is not None and loaded.to_dict() == snap.to_dict()
    (info2,) = await rt.list()
    assert (info2.workflow, info2.version, info2.state) == ("wf", 1, "idle")
    assert [e.kind for e in await rt.journal("m")] == ["started"]


async def test_send_dedupes_by_event_id_even_after_delivery(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    assert await rt.send("m", "START", event_id="e1") is True
    assert await rt.send("m", "OTHER", event_id="e1") is False
    assert await rt.send("m", "NEXT", event_id="e2") is True
    first = await rt.next_event("m")
    assert first is not None and (first.event_id, first.event.type) == ("e1", "START")
    token = await claim_one(rt, "m")
    await rt.save(
        await make_snapshot("m", version=1), expected_version=0, token=token, consumed=[first.seq]
    )
    assert await rt.send("m", "START", event_id="e1") is False  # delivered, still known
    nxt = await rt.next_event("m")
    assert nxt is not None and nxt.event_id == "e2"


async def test_events_in_every_form_come_back_in_order(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    await rt.send("m", "PLAIN")
    await rt.send("m", Event("FULL", {"b": 2, "a": [1, {"x": None}]}, correlation_id="c-1"))
    await rt.send("m", {"type": "MAPPED", "payload": 1.5})
    token = await claim_one(rt, "m")
    seen: list[tuple[Any, ...]] = []
    while (item := await rt.next_event("m")) is not None:
        ev = item.event
        seen.append((ev.type, ev.payload, ev.correlation_id))
        assert ev.timestamp.tzinfo is not None and item.event_id
        snap = await make_snapshot("m", version=len(seen))
        await rt.save(snap, expected_version=len(seen) - 1, token=token, consumed=[item.seq])
    assert seen == [
        ("PLAIN", None, None),
        ("FULL", {"b": 2, "a": [1, {"x": None}]}, "c-1"),
        ("MAPPED", 1.5, None),
    ]


async def test_unknown_machine(rt: Any) -> None:
    for call in (rt.send("ghost", "GO"), rt.request_cancel("ghost")):
        with pytest.raises(StateMachineError) as info:
            await call
        assert info.value.code == ErrorCode.UNKNOWN_MACHINE
    assert await rt.next_event("ghost") is None
    assert await rt.release("ghost", 1, wake_at=None) is False
    assert await rt.renew("w1", {"ghost": 1}, LEASE) == {"ghost"}


async def test_finished_machine_takes_no_new_events(rt: Any, make_snapshot: MakeSnapshot) -> None:
    await saved(rt, make_snapshot, "m")
    assert await rt.send("m", "START", event_id="early") is True
    token = await claim_one(rt, "m")
    done = await make_snapshot("m", version=2, steps=3, status="completed")
    await rt.save(done, expected_version=1, token=token)
    assert await rt.release("m", token, wake_at=None) is True
    with pytest.raises(StateMachineError) as info:
        await rt.send("m", "START", event_id="late")
    assert info.value.code == ErrorCode.NOT_ACTIVE
    assert await rt.send("m", "START", event_id="early") is False  # a re-send: ignored
    assert await rt.claim("w1", limit=10, lease_ms=LEASE) == []  # pending event, not active


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_cancel_of_a_finished_machine_is_not_active(
    rt: Any, make_snapshot: MakeSnapshot, status: str
) -> None:
    await saved(rt, make_snapshot, "m", status=status)
    with pytest.raises(StateMachineError) as info:
        await rt.request_cancel("m")
    assert info.value.code == ErrorCode.NOT_ACTIVE
    assert str(info.value) == f"machine 'm' is already {status}: there is nothing to cancel"
    assert await rt.cancel_requested("m") is False  # nothing written


# ------------------------------------------------------------------------- claims


async def test_claim_takes_only_active_machines_with_work(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    # a due timer (set up first: it needs a claim of its own)
    await saved(rt, make_snapshot, "timer")
    await rt.send("timer", "GO")
    token = await claim_one(rt, "timer")
    item = await rt.next_event("timer")
    await rt.save(
        await make_snapshot("timer", version=2),
        expected_version=1,
        token=token,
        consumed=[item.seq],
    )
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert await rt.release("timer", token, wake_at=past) is True

    await saved(rt, make_snapshot, "idle")
    await rt.start("wf", "fresh", {})
    busy = await make_snapshot("busy", version=1)
    busy = dataclasses.replace(busy, in_flight=_in_flight())
    await rt.save(busy, expected_version=None, workflow="wf")
    await saved(rt, make_snapshot, "evt")
    await rt.send("evt", "START")
    await saved(rt, make_snapshot, "cxl")
    await rt.request_cancel("cxl")
    await saved(rt, make_snapshot, "done")
    await rt.request_cancel("done")  # asked before it completed: an ended machine is not taken
    done = await make_snapshot("done", version=2, status="completed")
    await rt.save(done, expected_version=1)

    claims = await rt.claim("w1", limit=10, lease_ms=LEASE)
    assert [c.machine_id for c in claims] == ["busy", "cxl", "evt", "fresh", "timer"]
    by_id = {c.machine_id: c for c in claims}
    assert by_id["cxl"].cancel_requested and not by_id["evt"].cancel_requested
    assert by_id["busy"].snapshot is not None and by_id["busy"].snapshot.in_flight is not None
    assert by_id["evt"].snapshot is not None and by_id["evt"].workflow == "wf"
    assert by_id["fresh"].snapshot is None
    assert await rt.claim("w2", limit=10, lease_ms=LEASE) == []  # all leased now


async def test_claim_honours_limit_in_id_order(rt: Any) -> None:
    for mid in ("m3", "m1", "m2"):
        await rt.start("wf", mid, {})
    assert [c.machine_id for c in await rt.claim("w1", limit=2, lease_ms=LEASE)] == ["m1", "m2"]
    assert [c.machine_id for c in await rt.claim("w1", limit=2, lease_ms=LEASE)] == ["m3"]
    assert await rt.claim("w1", limit=2, lease_ms=LEASE) == []


async def test_live_lease_kept_expired_lease_taken_over_with_higher_token(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    t1 = await claim_one(rt, "m", "w1", lease_ms=100)
    assert await rt.claim("w2", limit=5, lease_ms=LEASE) == []
    await rt.save(await make_snapshot("m", version=1), expected_version=0, token=t1)
    await asyncio.sleep(0.15)
    # expired but not taken yet: a tokenless save is no longer refused
    await rt.save(await make_snapshot("m", version=2), expected_version=1)
    await rt.send("m", "GO")
    t2 = await claim_one(rt, "m", "w2")
    assert t2 > t1
    assert await rt.renew("w1", {"m": t1}, LEASE) == {"m"}
    assert await rt.release("m", t1, wake_at=None) is False
    with pytest.raises(StateMachineError) as info:
        await rt.save(await make_snapshot("m", version=3), expected_version=2, token=t1)
    assert info.value.code == ErrorCode.LEASE_LOST


async def test_renew_extends_a_lease_and_reports_lost_ones(rt: Any) -> None:
    await rt.start("wf", "m", {})
    token = await claim_one(rt, "m", "w1", lease_ms=150)
    await asyncio.sleep(0.05)
    assert await rt.renew("w1", {"m": token}, 600) == set()
    await asyncio.sleep(0.15)  # past the first lease, within the renewed one
    assert await rt.claim("w2", limit=5, lease_ms=LEASE) == []
    assert await rt.renew("w2", {"m": token}, LEASE) == {"m"}  # not its lease
    assert await rt.renew("w1", {"m": token + 1, "x": 1}, LEASE) == {"m", "x"}
    assert await rt.renew("w1", {}, LEASE) == set()
    assert await rt.release("m", token, wake_at=None) is True
    assert await rt.renew("w1", {"m": token}, LEASE) == {"m"}  # released: gone


async def test_release_with_wake_at_claimable_only_from_then(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    token = await claim_one(rt, "m")
    await rt.save(await make_snapshot("m", version=1), expected_version=0, token=token)
    assert await rt.release("m", token + 1, wake_at=None) is False  # not the holder
    wake = datetime.now(UTC) + timedelta(milliseconds=250)
    assert await rt.release("m", token, wake_at=wake) is True
    assert await rt.claim("w1", limit=5, lease_ms=LEASE) == []
    await asyncio.sleep(max(0.0, (wake - datetime.now(UTC)).total_seconds()) + 0.02)
    again = await claim_one(rt, "m")
    assert again > token
    assert await rt.release("m", again, wake_at=None) is True  # the claim used the timer up
    assert await rt.claim("w1", limit=5, lease_ms=LEASE) == []
    await rt.send("m", "GO")
    assert await claim_one(rt, "m") > again


async def test_claim_only_of_the_workflows_asked_for(rt: Any, make_snapshot: MakeSnapshot) -> None:
    await rt.start("deploy", "a", {})
    await rt.start("rollback", "b", {})
    await rt.save(await make_snapshot("c", version=1), expected_version=None)  # no workflow
    await rt.request_cancel("c")
    assert await rt.claim("w1", limit=5, lease_ms=LEASE, workflows=["other"]) == []
    claims = await rt.claim("w1", limit=5, lease_ms=LEASE, workflows={"rollback"})
    assert [c.machine_id for c in claims] == ["b"]
    claims = await rt.claim("w1", limit=5, lease_ms=LEASE, workflows=("deployment-workflow",))
    assert [(c.machine_id, c.workflow) for c in claims] == [("c", "deployment-workflow")]
    assert [c.machine_id for c in await rt.claim("w1", limit=5, lease_ms=LEASE)] == ["a"]


async def test_request_cancel_makes_an_idle_machine_claimable(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await saved(rt, make_snapshot, "m")
    assert await rt.cancel_requested("m") is False
    assert await rt.claim("w1", limit=5, lease_ms=LEASE) == []
    await rt.request_cancel("m")
    assert await rt.cancel_requested("m") is True
    assert await rt.cancel_requested("ghost") is False
    (claim,) = await rt.claim("w1", limit=5, lease_ms=LEASE)
    assert claim.cancel_requested is True and claim.snapshot is not None


# -------------------------------------------------------------------- saves + leases


async def test_consumed_events_are_delivered_with_the_save_only(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    await rt.send("m", "A", event_id="a")
    await rt.send("m", "B", event_id="b")
    token = await claim_one(rt, "m")
    a = await rt.next_event("m")
    assert a is not None and a.event_id == "a"
    assert (await rt.next_event("m")) == a  # reading does not consume
    await rt.save(
        await make_snapshot("m", version=1), expected_version=0, token=token, consumed=[a.seq]
    )
    b = await rt.next_event("m")
    assert b is not None and b.event_id == "b" and b.seq > a.seq
    # refused saves deliver nothing
    with pytest.raises(StateMachineError) as info:
        await rt.save(
            await make_snapshot("m", version=2), expected_version=0, token=token, consumed=[b.seq]
        )
    assert info.value.code == ErrorCode.CONFLICT
    with pytest.raises(StateMachineError) as info:
        await rt.save(
            await make_snapshot("m", version=2),
            expected_version=1,
            token=token + 7,
            consumed=[b.seq],
        )
    assert info.value.code == ErrorCode.LEASE_LOST
    assert await rt.next_event("m") == b
    await rt.save(
        await make_snapshot("m", version=2), expected_version=1, token=token, consumed=[b.seq]
    )
    assert await rt.next_event("m") is None


async def test_stale_token_is_lease_lost_and_writes_nothing(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await rt.start("wf", "m", {})
    t1 = await claim_one(rt, "m", "w1")
    v1 = await make_snapshot("m", version=1)
    await rt.save(v1, expected_version=0, journal=[rec("one")], token=t1)
    assert await rt.release("m", t1, wake_at=None)
    await rt.send("m", "GO", event_id="go")
    t2 = await claim_one(rt, "m", "w2")
    item = await rt.next_event("m")
    before = (await rt.list(), await rt.journal("m"))

    stale = await make_snapshot("m", version=2, steps=1, status="failed")
    with pytest.raises(StateMachineError) as info:
        await rt.save(
            stale,
            expected_version=1,
            journal=[rec("ghost")],
            token=t1,
            consumed=[item.seq],
            workflow="other",
        )
    assert info.value.code == ErrorCode.LEASE_LOST
    loaded = await rt.load("m")
    assert loaded is not None and loaded.to_dict() == v1.to_dict()
    assert (await rt.list(), await rt.journal("m")) == before
    assert await rt.next_event("m") == item
    await rt.save(stale, expected_version=1, token=t2, consumed=[item.seq])  # the holder can


async def test_save_without_token_refused_while_a_lease_is_live(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    await saved(rt, make_snapshot, "m")
    await rt.send("m", "GO")
    token = await claim_one(rt, "m", lease_ms=5_000)
    v2 = await make_snapshot("m", version=2, steps=1)
    with pytest.raises(StateMachineError) as info:
        await rt.save(v2, expected_version=1, journal=[rec("x")])
    assert info.value.code == ErrorCode.LEASE_LOST
    assert await rt.journal("m") == []
    with pytest.raises(StateMachineError) as info:  # the lease is checked first
        await rt.save(v2, expected_version=5)
    assert info.value.code == ErrorCode.LEASE_LOST
    with pytest.raises(StateMachineError) as info:  # the holder with a stale version
        await rt.save(v2, expected_version=5, token=token)
    assert info.value.code == ErrorCode.CONFLICT
    with pytest.raises(StateMachineError) as info:  # a fenced-out writer learns why
        await rt.save(v2, expected_version=5, token=token - 1)
    assert info.value.code == ErrorCode.LEASE_LOST
    assert await rt.release("m", token, wake_at=None)
    await rt.save(v2, expected_version=1, journal=[rec("x")])
    assert [e.kind for e in await rt.journal("m")] == ["x"]


# -------------------------------------------------------------------------- wake-ups


@pytest.mark.parametrize("action", ["send", "start", "cancel"])
async def test_wait_for_work_returns_early(rt: Any, action: str) -> None:
    await rt.start("wf", "m", {})
    await rt.wait_for_work(0.01)  # a first call may set up its listener
    waiter = asyncio.ensure_future(rt.wait_for_work(5.0))
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    if action == "send":
        await rt.send("m", "GO")
    elif action == "start":
        await rt.start("wf", "n", {})
    else:
        await rt.request_cancel("m")
    await asyncio.wait_for(waiter, 2.0)
    assert time.perf_counter() - t0 < 1.0


async def test_wait_for_work_times_out(rt: Any) -> None:
    t0 = time.perf_counter()
    await rt.wait_for_work(0.1)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------ prune


async def test_prune_keeps_live_journals_undelivered_events_and_recent_ids(
    rt: Any, make_snapshot: MakeSnapshot
) -> None:
    done = await make_snapshot("done", version=1, status="completed")
    await rt.save(done, expected_version=None, workflow="wf", journal=[rec("a"), rec("b")])
    live = await make_snapshot("live", version=1)
    await rt.save(live, expected_version=None, workflow="wf", journal=[rec("intent")])
    assert await rt.send("live", "START", event_id="e1") is True
    assert await rt.send("live", "NEXT", event_id="e2") is True
    first = await rt.next_event("live")
    assert first is not None and first.event_id == "e1"
    token = await claim_one(rt, "live")
    snap = await make_snapshot("live", version=2)
    await rt.save(snap, expected_version=1, token=token, consumed=[first.seq])

    counts = await rt.prune(timedelta(days=1))  # the journal records are from 2024
    assert (counts.journal, counts.inbox) == (2, 0)
    assert await rt.journal("done") == []
    assert [e.kind for e in await rt.journal("live")] == ["intent"]  # live: all kept
    assert await rt.send("live", "START", event_id="e1") is False  # kept: de-duplicated

    counts = await rt.prune(timedelta(0))
    assert (counts.journal, counts.inbox) == (0, 1)
    left = await rt.next_event("live")
    assert left is not None and left.event_id == "e2"  # never an undelivered event
    assert [e.kind for e in await rt.journal("live")] == ["intent"]
    assert await rt.send("live", "START", event_id="e1") is True  # its id is forgotten
    assert [i.machine_id for i in await rt.list()] == ["done", "live"]
    assert await rt.prune(timedelta(days=36500)) == type(counts)(0, 0)


@pytest.mark.parametrize("older_than", [timedelta(seconds=-1), 30, "30d", None])
async def test_prune_refuses_what_is_not_an_age(rt: Any, older_than: Any) -> None:
    with pytest.raises(StateMachineError) as info:
        await rt.prune(older_than)
    assert info.value.code == ErrorCode.INVALID_DURATION


# ------------------------------------------------------------------------ helpers


def _in_flight() -> InFlight:
    return InFlight(
        from_state="idle",
        to_state="validating",
        event=Event("START", None, datetime(2024, 5, 1, tzinfo=UTC)),
        transition_index=0,
        attempt=1,
        idempotency_key="k-1",
        started_at=datetime(2024, 5, 1, tzinfo=UTC),
    )


async def test_a_claim_names_the_worker_whose_expired_lease_it_took(rt: Any) -> None:
    await rt.start("wf", "m", {})
    await rt.start("wf", "n", {})
    first = {c.machine_id: c for c in await rt.claim("w1", limit=5, lease_ms=100)}
    assert [c.taken_from for c in first.values()] == [None, None]
    assert await rt.release("n", first["n"].token, wake_at=None)  # given back: free
    await asyncio.sleep(0.15)  # the lease of m expires, w1 never gave it back
    taken = {c.machine_id: c.taken_from for c in await rt.claim("w2", limit=5, lease_ms=LEASE)}
    assert taken == {"m": "w1", "n": None}
