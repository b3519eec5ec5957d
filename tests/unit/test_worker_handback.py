"""A worker asked to stop while a machine waits out a retry delay hands the machine back
at once (the delay is durable), due at its recorded retry time, instead of holding its
lease until the delay and the retry are over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from deploysm import State, StateMachineConfig, Transition, Worker, effect
from deploysm.stores import MemoryStore
from deploysm.testing import VirtualClock


async def eventually(pred: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0)


def flaky(clock: VirtualClock, calls: list[int]) -> StateMachineConfig[str, str, Any]:
    def step(ctx: Any, state: State[str]) -> None:
        calls.append(state.attempts)
        if state.attempts < 2:
            raise RuntimeError("the first attempt fails")

    return StateMachineConfig(
        id="flaky",
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[Transition("a", "b", "GO")],
        effects={"b": effect().execute(step).set_idempotent(True).build()},
        retry_policy={"max_attempts": 3, "initial_delay_ms": 20_000, "jitter_factor": 0},
        clock=clock,
    )


async def test_stop_during_a_retry_delay_hands_the_machine_back_at_once() -> None:
    clock, calls = VirtualClock(), []
    config = flaky(clock, calls)
    async with MemoryStore() as store:
        await store.start("flaky", "m1", {})
        await store.send("m1", "GO")
        first = Worker(store, {"flaky": config}, worker_id="w1")
        task = asyncio.create_task(first.run())
        await eventually(lambda: clock.pending == 1)  # asleep in the 20 s retry delay
        await first.stop()
        await asyncio.wait_for(task, 2)  # without the delay passing

        snap = await store.load("m1")
        assert calls == [1]
        assert snap is not None and snap.in_flight is not None
        assert snap.in_flight.phase == "retry_wait"
        row = store._rows["m1"]
        assert (row.lease_owner, row.lease_until) == (None, None)
        assert row.wake_at == snap.in_flight.next_retry_at

        second = Worker(store, {"flaky": config}, worker_id="w2")
        done = asyncio.create_task(second.run_until_idle())
        await eventually(lambda: clock.pending == 1)  # resumed: the rest of the delay
        clock.advance(20)
        await asyncio.wait_for(done, 2)
        assert calls == [1, 2]
        snap = await store.load("m1")
        assert snap is not None and snap.current_state.name == "b"
