"""SPEC 4: the worker runs machines out of a store (inbox order, exactly-once delivery,
concurrency, several workers, stop, cancel requests, parked machines, unknown workflows).

Every test talks to the store only through the ``RuntimeStore`` protocol, so the same
tests can run on any store: add it to ``STORES``. Lease expiry and state timeouts live in
``test_worker_leases.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from deploysm import (
    EffectResult,
    ErrorCode,
    Hooks,
    State,
    StateMachineConfig,
    StateMachineError,
    Transition,
    Worker,
    effect,
)
from deploysm.stores import MemoryStore

STORES: dict[str, Callable[[], Any]] = {"memory": MemoryStore}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    s = STORES[request.param]()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# --- a workflow whose effect reports who ran it, and when -------------------------------


class Probe:
    """What the effects and hooks of the ``ticker`` workflow saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (machine, worker) per effect run
        self.inside: dict[str, list[str]] = {}  # machine -> workers inside its effect now
        self.overlaps: list[tuple[str, str, str]] = []  # (machine, worker in, worker entering)
        self.running = 0
        self.max_running = 0
        self.gate = asyncio.Event()  # effects wait here; open unless a test closes it
        self.gate.set()
        self.cancelled: list[str] = []
        self.completed: list[str] = []

    def enter(self, machine: str, worker: str) -> None:
        here = self.inside.setdefault(machine, [])
        self.overlaps.extend((machine, w, worker) for w in here)
        here.append(worker)
        self.calls.append((machine, worker))
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def exit(self, machine: str, worker: str) -> None:
        self.inside[machine].remove(worker)
        self.running -= 1

    def count(self, machine: str) -> int:
        return sum(1 for m, _ in self.calls if m == machine)


def ticker(probe: Probe, worker: str = "w") -> StateMachineConfig[Any, Any, Any]:
    """idle/step --TICK--> step (effect), step --RESET--> idle, idle/step --FINISH--> done.

    ``worker`` only labels what this worker's copy of the workflow records."""

    async def tick(ctx: Any, state: State[Any]) -> EffectResult:
        name = ctx["name"]
        probe.enter(name, worker)
        try:
            await probe.gate.wait()
            for _ in range(3):  # let other tasks run while inside the effect
                await asyncio.sleep(0)
        finally:
            probe.exit(name, worker)
        ctx["ticks"] = ctx.get("ticks", 0) + 1
        return EffectResult(True, f"tick by {worker}")

    return StateMachineConfig(
        id="ticker",
        initial_state="idle",
        states=["idle", "step", "done"],
        events=["TICK", "RESET", "FINISH"],
        transitions=[
            Transition(from_=["idle", "step"], to="step", event="TICK"),
            Transition(from_="step", to="idle", event="RESET"),
            Transition(from_=["idle", "step"], to="done", event="FINISH"),
        ],
        effects={"step": effect().execute(tick).set_idempotent(True).build()},
        hooks=Hooks(
            on_cancel=lambda state, ctx: probe.cancelled.append(ctx["name"]),
            on_complete=lambda state, ctx, metrics: probe.completed.append(ctx["name"]),
        ),
    )


def worker_for(store: Any, probe: Probe, worker_id: str = "w", **kw: Any) -> Worker:
    kw.setdefault("poll_ms", 20)
    return Worker(store, {"ticker": lambda: ticker(probe, worker_id)}, worker_id=worker_id, **kw)


def tick(n: int) -> dict[str, Any]:
    return {"type": "TICK", "payload": n}


async def start(store: Any, *names: str) -> None:
    for name in names:
        await store.start("ticker", name, {"name": name})


async def visits(store: Any, machine: str) -> list[tuple[str, Any]]:
    """(event, payload) of every state the machine entered, in order."""
    snap = await store.load(machine)
    assert snap is not None
    return [
        (s.data["event"], s.data.get("payload"))
        for s in [*snap.history, snap.current_state]
        if "event" in s.data
    ]


async def tick_payloads(store: Any, machine: str) -> list[Any]:
    return [p for e, p in await visits(store, machine) if e == "TICK"]


async def kinds(store: Any, machine: str) -> list[str]:
    return [e.kind for e in await store.journal(machine)]


async def eventually(pred: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[list[asyncio.Task[None]]]:
    """``run()`` the workers in the background; stop them and wait for them on exit."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield tasks
    finally:
        for w in workers:
            await w.stop()
        done, pending = await asyncio.wait(tasks, timeout=3)
        for t in pending:
            t.cancel()
        assert not pending, "run() did not return after stop()"
        for t in done:
            t.result()


# --- first run ----------------------------------------------------------------------------


async def test_started_machine_gets_a_first_snapshot_and_a_started_record(store: Any) -> None:
    probe = Probe()
    await store.start("ticker", "m1", {"name": "m1", "replicas": 3})
    assert await store.load("m1") is None  # started, never run

    assert await worker_for(store, probe, "w1").run_until_idle() == 1

    snap = await store.load("m1")
    assert snap is not None
    assert snap.machine_id == "m1"
    assert snap.status == "active"
    assert snap.current_state.name == "idle"
    assert snap.version >= 1
    assert snap.context == {"name": "m1", "replicas": 3}
    journal = await store.journal("m1")
    assert journal[0].kind == "started"
    assert journal[0].data["workflow"] == "ticker"
    assert journal[0].data["worker"] == "w1"
    assert probe.calls == []
    assert [m.machine_id for m in await store.list(status="active")] == ["m1"]


# --- inbox: order, once, duplicates, refusals --------------------------------------------


async def test_events_sent_before_and_while_running_are_delivered_in_order_once(
    store: Any,
) -> None:
    probe = Probe()
    await start(store, "m1")
    for n in (1, 2, 3):
        await store.send("m1", tick(n))
    probe.gate.clear()
    worker = worker_for(store, probe, "w1")
    async with running(worker):
        await eventually(lambda: probe.running == 1)  # inside the effect of TICK 1
        for n in (4, 5):
            await store.send("m1", tick(n))
        probe.gate.set()
        await eventually(lambda: probe.count("m1") == 5 and probe.running == 0)
        await eventually(lambda: worker.processed >= 1)  # released: the worker is idle
        await store.send("m1", tick(6))
        await store.send("m1", "FINISH")
        await eventually(lambda: probe.completed == ["m1"])

    assert await tick_payloads(store, "m1") == [1, 2, 3, 4, 5, 6]
    assert probe.calls == [("m1", "w1")] * 6
    snap = await store.load("m1")
    assert snap.status == "completed"
    assert snap.current_state.name == "done"
    assert snap.context["ticks"] == 6
    assert (await visits(store, "m1"))[-1] == ("FINISH", None)
    assert (await kinds(store, "m1")).count("committed") == 7


async def test_duplicate_event_ids_are_ignored(store: Any) -> None:
    probe = Probe()
    await start(store, "m1")
    assert await store.send("m1", tick(1), event_id="e1") is True
    assert await store.send("m1", tick(99), event_id="e1") is False
    assert await store.send("m1", tick(2), event_id="e2") is True
    worker = worker_for(store, probe)

    assert await worker.run_until_idle() == 1
    # Still ignored once the original was delivered.
    assert await store.send("m1", tick(98), event_id="e2") is False
    assert await store.send("m1", tick(97), event_id="e1") is False
    assert await worker.run_until_idle() == 0

    assert await tick_payloads(store, "m1") == [1, 2]
    assert probe.count("m1") == 2
    assert (await store.load("m1")).context["ticks"] == 2


async def test_a_refused_event_is_consumed_and_the_next_one_runs(store: Any) -> None:
    probe = Probe()
    await start(store, "m1")
    for ev in ["RESET", tick(1), "RESET", "RESET", tick(2)]:  # RESET is refused in idle
        await store.send("m1", ev)
    worker = worker_for(store, probe)

    assert await worker.run_until_idle() == 1

    assert await visits(store, "m1") == [("TICK", 1), ("RESET", None), ("TICK", 2)]
    assert probe.count("m1") == 2
    journal = await store.journal("m1")
    refused = [e for e in journal if e.kind == "event_refused"]
    assert [e.data["event"] for e in refused] == ["RESET", "RESET"]
    assert await store.next_event("m1") is None  # the refused events were consumed
    assert await worker.run_until_idle() == 0  # and are not delivered again
    assert probe.count("m1") == 2


class FlakyStore(MemoryStore):
    """A MemoryStore that refuses the first write of an intent, as a store that is
    briefly down does."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def save(self, snapshot: Any, **kw: Any) -> None:
        if self.refused == 0 and any(r.kind == "intent" for r in kw.get("journal", ())):
            self.refused += 1
            raise StateMachineError("store briefly unavailable", ErrorCode.STORE_UNAVAILABLE)
        await super().save(snapshot, **kw)


async def test_an_event_whose_intent_could_not_be_written_stays_in_the_inbox() -> None:
    store = FlakyStore()
    probe = Probe()
    await start(store, "m1")
    await store.send("m1", tick(1))
    worker = worker_for(store, probe)

    await worker.run_until_idle()

    assert store.refused == 1
    assert await visits(store, "m1") == [("TICK", 1)]  # delivered on the next claim
    assert probe.count("m1") == 1  # the effect never ran without its intent
    assert "event_refused" not in await kinds(store, "m1")
    assert await store.next_event("m1") is None


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, machine_id: str) -> Any:
        self.loads += 1
        return await super().load(machine_id)


async def test_a_claimed_machine_resumes_from_the_claims_snapshot_without_a_reload() -> None:
    store = CountingStore()
    probe = Probe()
    await start(store, "m1")
    await store.send("m1", tick(1))
    worker = worker_for(store, probe)
    await worker.run_until_idle()
    await store.send("m1", tick(2))  # the second claim carries the stored snapshot

    await worker.run_until_idle()

    assert await tick_payloads(store, "m1") == [1, 2]
    assert store.loads == 1  # the test's own read above; none by the worker


# --- run_until_idle ------------------------------------------------------------------------


async def test_run_until_idle_returns_when_all_is_done_with_the_number_processed(
    store: Any,
) -> None:
    probe = Probe()
    await start(store, "a", "b", "c", "d")
    await store.send("a", tick(1))
    await store.send("b", tick(1))
    await store.send("b", "FINISH")
    await store.send("c", tick(1))
    await store.send("c", tick(2))
    worker = worker_for(store, probe)

    assert await worker.run_until_idle() == 4

    assert await tick_payloads(store, "a") == [1]
    assert await tick_payloads(store, "b") == [1]
    assert await tick_payloads(store, "c") == [1, 2]
    assert (await store.load("d")).current_state.name == "idle"
    assert (await store.load("b")).status == "completed"
    for name in "abcd":
        assert await store.next_event(name) is None
    assert probe.running == 0

    assert await worker.run_until_idle() == 0  # nothing left
    await store.send("c", tick(3))
    assert await worker.run_until_idle() == 1
    assert await tick_payloads(store, "c") == [1, 2, 3]
    assert probe.count("c") == 3


# --- concurrency ------------------------------------------------------------------------


async def test_the_concurrency_limit_bounds_effects_running_at_once(store: Any) -> None:
    probe = Probe()
    names = [f"m{i}" for i in range(10)]
    await start(store, *names)
    for name in names:
        await store.send(name, tick(1))
    probe.gate.clear()
    worker = worker_for(store, probe, concurrency=3)
    task = asyncio.create_task(worker.run_until_idle())
    try:
        await eventually(lambda: probe.running == 3)
        for _ in range(50):
            await asyncio.sleep(0)
        assert probe.running == 3
        assert len(probe.calls) == 3
    finally:
        probe.gate.set()
    assert await asyncio.wait_for(task, 3) == 10

    assert probe.max_running == 3
    assert sorted(m for m, _ in probe.calls) == names
    for name in names:
        assert await tick_payloads(store, name) == [1]


async def test_two_workers_never_run_one_machine_at_once_and_finish_everything(
    store: Any,
) -> None:
    probe = Probe()
    names = [f"m{i}" for i in range(8)]
    await start(store, *names)
    a = worker_for(store, probe, "a", concurrency=3)
    b = worker_for(store, probe, "b", concurrency=3)
    async with running(a, b):
        for wave in (1, 2, 3):
            for name in names:
                await store.send(name, tick(wave))
            if wave == 1:
                await asyncio.sleep(0)
        for name in names:
            await store.send(name, "FINISH")
        await eventually(lambda: sorted(probe.completed) == names, within=3)

    assert probe.overlaps == []
    assert {w for _, w in probe.calls} == {"a", "b"}  # both did some of the work
    for name in names:
        assert probe.count(name) == 3
        assert await tick_payloads(store, name) == [1, 2, 3]
        snap = await store.load(name)
        assert snap.status == "completed"
        assert snap.context["ticks"] == 3


# --- stop ------------------------------------------------------------------------------


async def test_stop_lets_the_running_transition_finish_and_gives_the_leases_back(
    store: Any,
) -> None:
    probe = Probe()
    await start(store, "m1", "m2")
    for name in ("m1", "m2"):
        await store.send(name, tick(1))
        await store.send(name, tick(2))
    probe.gate.clear()
    a = worker_for(store, probe, "a", concurrency=1)
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: probe.running == 1)
        await a.stop()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()  # waits for the transition in progress
    finally:
        probe.gate.set()
    await asyncio.wait_for(task, 3)

    assert probe.calls == [("m1", "a")]
    assert probe.running == 0
    assert await tick_payloads(store, "m1") == [1]  # finished, committed, no more events
    assert (await store.load("m1")).context["ticks"] == 1
    assert await store.load("m2") is None  # never claimed after stop()

    # The leases were given back: another worker takes over at once.
    b = worker_for(store, probe, "b")
    assert await b.run_until_idle() == 2
    assert await tick_payloads(store, "m1") == [1, 2]
    assert await tick_payloads(store, "m2") == [1, 2]
    assert probe.calls == [("m1", "a"), ("m1", "b"), ("m2", "b"), ("m2", "b")]


# --- cancel requests ------------------------------------------------------------------


async def test_request_cancel_on_an_idle_machine_cancels_it_on_the_next_run(store: Any) -> None:
    probe = Probe()
    await start(store, "m1")
    worker = worker_for(store, probe)
    assert await worker.run_until_idle() == 1
    await store.request_cancel("m1")

    assert await worker.run_until_idle() == 1

    snap = await store.load("m1")
    assert snap.status == "cancelled"
    assert probe.cancelled == ["m1"]
    assert "cancelled" in await kinds(store, "m1")
    assert await worker.run_until_idle() == 0
    with pytest.raises(StateMachineError) as info:
        await store.send("m1", tick(1))
    assert info.value.code == ErrorCode.NOT_ACTIVE


async def test_request_cancel_with_pending_events_cancels_without_applying_them(
    store: Any,
) -> None:
    probe = Probe()
    await start(store, "m1", "m2")
    for name in ("m1", "m2"):
        await store.send(name, tick(1))
        await store.send(name, tick(2))
    await store.request_cancel("m1")

    assert await worker_for(store, probe).run_until_idle() == 2

    snap = await store.load("m1")
    assert snap.status == "cancelled"
    assert snap.history == []
    assert snap.current_state.name == "idle"
    assert probe.count("m1") == 0
    assert probe.cancelled == ["m1"]
    assert await tick_payloads(store, "m2") == [1, 2]  # the other machine is unaffected


async def test_request_cancel_while_running_applies_no_further_event(store: Any) -> None:
    """request_cancel asks "whichever worker runs (or next claims) the machine" to cancel
    it: the worker running it must not go on delivering queued events."""
    probe = Probe()
    await start(store, "m1")
    await store.send("m1", tick(1))
    await store.send("m1", tick(2))
    probe.gate.clear()
    worker = worker_for(store, probe)
    task = asyncio.create_task(worker.run_until_idle())
    try:
        await eventually(lambda: probe.running == 1)
        await store.request_cancel("m1")
    finally:
        probe.gate.set()
    await asyncio.wait_for(task, 3)

    snap = await store.load("m1")
    assert snap.status == "cancelled"
    assert probe.cancelled == ["m1"]
    assert 2 not in await tick_payloads(store, "m1")
    assert probe.count("m1") == 1


# --- machines a worker does not run ---------------------------------------------------


def fragile(calls: list[str]) -> StateMachineConfig[Any, Any, Any]:
    """idle --GO--> deployed, whose effect fails and whose rollback fails too: the
    machine is parked in needs_attention."""

    def execute(ctx: Any, state: State[Any]) -> EffectResult:
        calls.append("execute")
        return EffectResult(False, "deploy failed")

    def rollback(ctx: Any, state: State[Any]) -> None:
        calls.append("rollback")
        raise RuntimeError("rollback failed too")

    return StateMachineConfig(
        id="fragile",
        initial_state="idle",
        states=["idle", "deployed"],
        events=["GO"],
        transitions=[Transition(from_="idle", to="deployed", event="GO")],
        effects={"deployed": effect().execute(execute).rollback(rollback).build()},
    )


async def test_a_machine_in_needs_attention_is_not_claimed(store: Any) -> None:
    calls: list[str] = []
    await store.start("fragile", "m1", {})
    await store.send("m1", "GO")
    worker = Worker(store, {"fragile": lambda: fragile(calls)}, worker_id="w")
    assert await worker.run_until_idle() == 1
    parked = await store.load("m1")
    assert parked.status == "needs_attention"
    assert calls == ["execute", "rollback"]
    assert [m.machine_id for m in await store.list(status="needs_attention")] == ["m1"]

    await store.send("m1", "GO")  # an event for it waits; nobody runs it
    assert await worker.run_until_idle() == 0
    assert await Worker(store, {"fragile": lambda: fragile(calls)}).run_until_idle() == 0

    assert calls == ["execute", "rollback"]
    again = await store.load("m1")
    assert again.version == parked.version
    assert again.status == "needs_attention"


async def test_a_worker_leaves_machines_of_workflows_it_does_not_know(store: Any) -> None:
    """Workers may serve different workflows: one never claims (nor blocks) a machine
    whose workflow it does not know, and a worker that knows it takes it at once."""
    probe = Probe()
    await store.start("elsewhere", "a-lost", {"name": "a-lost"})
    await start(store, "b-ok")
    await store.send("b-ok", tick(1))
    await store.send("b-ok", "FINISH")
    worker = worker_for(store, probe, concurrency=1)

    await asyncio.wait_for(worker.run_until_idle(), 3)

    assert (await store.load("b-ok")).status == "completed"
    assert await tick_payloads(store, "b-ok") == [1]
    assert await store.load("a-lost") is None  # never run, never leased
    other = Worker(store, {"elsewhere": lambda: ticker(probe)}, worker_id="other")
    assert await asyncio.wait_for(other.run_until_idle(), 3) == 1
    assert (await store.load("a-lost")) is not None
