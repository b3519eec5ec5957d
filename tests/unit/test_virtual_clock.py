"""Tests for deploysm.testing.VirtualClock (virtual time, no real waiting)."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deploysm.testing
from deploysm.core import _clock
from deploysm.testing import VirtualClock

START = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, failing fast (real-time guard) if a broken clock never wakes a sleep."""

    async def guarded() -> Any:
        return await asyncio.wait_for(coro, timeout=2)

    return asyncio.run(guarded())


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    """Fail instead of hanging the run if a broken clock never wakes a sleeper."""
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError("test hung: a virtual sleep was never woken")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 10, 10)  # re-armed: also breaks later hangs
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _on_readable(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, fut: asyncio.Future[None]
) -> None:
    loop.remove_reader(sock)
    fut.set_result(None)


async def block_on_ready_io() -> None:
    """Wait on I/O that is already readable: no real waiting, but the loop goes idle.

    Readiness is only noticed at the loop's next poll, so if nothing else is queued
    behind us the clock's checker runs with an empty ready queue (an idle loop).
    """
    loop = asyncio.get_running_loop()
    r, w = socket.socketpair()
    try:
        w.send(b"x")
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(r, _on_readable, loop, r, fut)
        await fut
    finally:
        r.close()
        w.close()


async def spawn_sleeper(clock: VirtualClock, seconds: float) -> asyncio.Task[None]:
    """Start ``clock.sleep(seconds)`` in a task that wakes us just before it sleeps.

    We are then queued ahead of the clock's checker, so a following
    ``block_on_ready_io()`` lets the checker see an idle loop.
    """
    started = asyncio.Event()

    async def sleeper() -> None:
        started.set()
        await clock.sleep(seconds)

    task = asyncio.create_task(sleeper())
    await started.wait()
    return task


# --- construction ---------------------------------------------------------------------


def test_public_api() -> None:
    assert deploysm.testing.__all__ == ["VirtualClock"]
    assert isinstance(VirtualClock(), _clock.Clock)


def test_default_start_is_fixed_aware_utc() -> None:
    clock = VirtualClock()
    assert clock.now() == START
    assert clock.now().tzinfo is UTC
    assert clock.elapsed == 0.0
    assert clock.pending == 0


def test_aware_start_is_normalised_to_utc() -> None:
    start = datetime(2030, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    clock = VirtualClock(start)
    assert clock.now() == start
    assert clock.now().tzinfo is UTC
    assert clock.now().hour == 10


def test_naive_start_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        VirtualClock(datetime(2025, 1, 1))


def test_elapsed_and_pending_are_read_only() -> None:
    clock = VirtualClock()
    with pytest.raises(AttributeError):
        clock.elapsed = 5.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        clock.pending = 1  # type: ignore[misc]


def test_repr_mentions_time() -> None:
    assert "2025-01-01T00:00:00+00:00" in repr(VirtualClock())


# --- basic sleeping ---------------------------------------------------------------------


async def test_long_sleep_is_instant_and_exact() -> None:
    clock = VirtualClock()
    t0 = time.perf_counter()
    await clock.sleep(3600)
    assert time.perf_counter() - t0 < 0.5
    assert clock.now() == at(3600)
    assert clock.now() - START == timedelta(hours=1)
    assert clock.elapsed == 3600.0
    assert clock.pending == 0


async def test_fractional_sleep() -> None:
    clock = VirtualClock()
    await clock.sleep(0.25)
    assert clock.now() == at(0.25)


@pytest.mark.parametrize("seconds", [0, 0.0, -1, -3600.5, -math.inf])
async def test_non_positive_sleep_does_not_advance_but_yields(seconds: float) -> None:
    clock = VirtualClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(seconds)
    assert ran == ["other"], "sleep(<=0) must yield to ready tasks"
    assert clock.elapsed == 0.0
    assert clock.now() == START
    await task


async def test_nan_sleep_rejected() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="NaN"):
        await clock.sleep(math.nan)
    assert clock.pending == 0


async def test_concurrent_sleepers_wake_in_deadline_order() -> None:
    clock = VirtualClock()
    woke: list[tuple[float, datetime]] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append((d, clock.now()))

    durations = [30, 5, 120, 1, 60, 0.5, 7]
    await asyncio.gather(*(sleeper(d) for d in durations))
    assert [d for d, _ in woke] == sorted(durations)
    for d, seen in woke:
        assert seen == at(d)
    assert clock.elapsed == 120


async def test_equal_deadlines_wake_in_registration_order() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, d: float) -> None:
        await clock.sleep(d)
        woke.append((name, clock.now()))

    await asyncio.gather(
        sleeper("a", 10), sleeper("b", 5), sleeper("c", 10), sleeper("d", 5), sleeper("e", 10)
    )
    assert [n for n, _ in woke] == ["b", "d", "a", "c", "e"]
    assert [t for _, t in woke] == [at(5), at(5), at(10), at(10), at(10)]


async def test_same_deadline_reached_from_different_start_times() -> None:
    clock = VirtualClock()
    woke: list[str] = []

    async def late() -> None:
        await clock.sleep(4)
        await clock.sleep(6)  # deadline 10, registered after "early"
        woke.append("late")

    async def early() -> None:
        await clock.sleep(10)
        woke.append("early")

    await asyncio.gather(early(), late())
    assert woke == ["early", "late"]
    assert clock.elapsed == 10


async def test_sleepers_sharing_a_deadline_wake_together() -> None:
    clock = VirtualClock()
    b_woke = asyncio.Event()
    b_seen_by_a: list[bool] = []

    async def a() -> None:
        await clock.sleep(5)
        await asyncio.sleep(0)  # one step: "b" was woken at the same instant, so it ran
        b_seen_by_a.append(b_woke.is_set())

    async def b() -> None:
        await clock.sleep(5)
        b_woke.set()

    await asyncio.gather(a(), b())
    assert b_seen_by_a == [True]
    assert clock.elapsed == 5


async def test_chained_sleeps_interleave_with_other_sleepers() -> None:
    clock = VirtualClock()
    log: list[tuple[str, float]] = []

    async def chain() -> None:
        for _ in range(4):
            await clock.sleep(3)
            log.append(("chain", clock.elapsed))

    async def single() -> None:
        await clock.sleep(10)
        log.append(("single", clock.elapsed))

    await asyncio.gather(single(), chain())
    assert log == [("chain", 3), ("chain", 6), ("chain", 9), ("single", 10), ("chain", 12)]


async def test_time_frozen_while_another_task_has_ready_work() -> None:
    clock = VirtualClock()
    events: list[str] = []
    seen_by_busy: list[datetime] = []

    async def busy() -> None:
        for _ in range(500):
            seen_by_busy.append(clock.now())
            await asyncio.sleep(0)
        events.append("busy done")

    async def sleeper() -> None:
        await clock.sleep(10)
        events.append("sleeper woke")
        assert clock.now() == at(10)

    await asyncio.gather(sleeper(), busy())
    assert events == ["busy done", "sleeper woke"]
    assert len(seen_by_busy) == 500
    assert set(seen_by_busy) == {START}
    assert clock.now() == at(10)


async def test_time_frozen_while_main_task_keeps_yielding() -> None:
    clock = VirtualClock()
    task = asyncio.create_task(clock.sleep(1))
    for _ in range(100):
        await asyncio.sleep(0)
        assert clock.elapsed == 0.0
        assert not task.done()
    await task
    assert clock.elapsed == 1.0


# --- cancellation ----------------------------------------------------------------------


async def test_cancelled_sleep_does_not_advance_time() -> None:
    clock = VirtualClock()
    task = asyncio.create_task(clock.sleep(100))
    await asyncio.sleep(0)  # let it register
    assert clock.pending == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending == 0
    await clock.sleep(1)
    assert clock.elapsed == 1.0
    assert clock.now() == at(1)


async def test_cancelled_sleep_does_not_advance_time_when_loop_idles() -> None:
    clock = VirtualClock()
    task = await spawn_sleeper(clock, 100)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await block_on_ready_io()  # idle with only a cancelled sleep: time must not move
    assert clock.elapsed == 0
    assert clock.pending == 0


async def test_time_jumps_while_tasks_wait_on_io() -> None:
    """Caveat: only ready work holds virtual time; waiting on I/O does not."""
    clock = VirtualClock()
    sleeper = await spawn_sleeper(clock, 10)
    await block_on_ready_io()
    assert clock.elapsed == 10
    await sleeper


async def test_cancelled_sleep_among_others_is_skipped() -> None:
    clock = VirtualClock()
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.elapsed)

    tasks = [asyncio.create_task(sleeper(d)) for d in (5, 50, 20)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert woke == [5, 20]
    assert clock.elapsed == 20


async def test_task_cancels_another_tasks_sleep() -> None:
    clock = VirtualClock()

    async def victim() -> str:
        try:
            await clock.sleep(100)
        except asyncio.CancelledError:
            assert clock.elapsed == 1
            raise
        return "not cancelled"

    async def killer(target: asyncio.Task[str]) -> None:
        await clock.sleep(1)
        target.cancel()

    v = asyncio.create_task(victim())
    await killer(v)
    with pytest.raises(asyncio.CancelledError):
        await v
    await clock.sleep(0.5)
    assert clock.elapsed == 1.5


async def test_infinite_sleep_waits_for_cancellation() -> None:
    clock = VirtualClock()
    forever = await spawn_sleeper(clock, math.inf)
    await block_on_ready_io()  # an idle loop must not jump to infinity
    assert clock.elapsed == 0
    await clock.sleep(1000)
    assert not forever.done()
    assert clock.elapsed == 1000
    assert clock.pending == 1
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert clock.pending == 0


# --- advance ---------------------------------------------------------------------------


async def test_advance_without_sleepers() -> None:
    clock = VirtualClock()
    clock.advance(90)
    assert clock.now() == at(90)
    clock.advance(0)
    assert clock.elapsed == 90
    await clock.sleep(10)
    assert clock.now() == at(100)


def test_advance_outside_event_loop() -> None:
    clock = VirtualClock()
    clock.advance(1.5)
    assert clock.elapsed == 1.5


async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    clock = VirtualClock()
    woke: list[tuple[float, float]] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append((d, clock.elapsed))

    tasks = [asyncio.create_task(sleeper(d)) for d in (5, 3, 10, 7, 3)]
    await asyncio.sleep(0)  # all registered; now jump by hand before the loop goes idle
    assert clock.pending == 5
    clock.advance(7)
    assert clock.elapsed == 7
    await asyncio.sleep(0)  # woken sleepers run now, in deadline order
    assert woke == [(3, 7), (3, 7), (5, 7), (7, 7)]
    assert clock.pending == 1
    assert not tasks[2].done()
    await asyncio.gather(*tasks)
    assert woke[-1] == (10, 10)


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf])
def test_advance_rejects_bad_durations(seconds: float) -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="advance"):
        clock.advance(seconds)
    assert clock.elapsed == 0


# --- interoperation with asyncio primitives --------------------------------------------


async def test_event_set_after_virtual_sleep() -> None:
    clock = VirtualClock()
    event = asyncio.Event()
    seen: list[datetime] = []

    async def waiter() -> None:
        await event.wait()
        seen.append(clock.now())

    async def setter() -> None:
        await clock.sleep(42)
        event.set()

    await asyncio.gather(waiter(), setter())
    assert seen == [at(42)]


async def test_lock_held_across_virtual_sleep() -> None:
    clock = VirtualClock()
    lock = asyncio.Lock()
    log: list[tuple[str, float]] = []

    async def worker(name: str, hold: float) -> None:
        async with lock:
            log.append((f"{name} in", clock.elapsed))
            await clock.sleep(hold)
            log.append((f"{name} out", clock.elapsed))

    await asyncio.gather(worker("a", 10), worker("b", 5), worker("c", 1))
    assert log == [
        ("a in", 0),
        ("a out", 10),
        ("b in", 10),
        ("b out", 15),
        ("c in", 15),
        ("c out", 16),
    ]


async def test_queue_producer_consumer() -> None:
    clock = VirtualClock()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    received: list[tuple[int, float]] = []

    async def producer() -> None:
        for i in range(5):
            await clock.sleep(2)
            await queue.put(i)
        await queue.put(None)

    async def consumer() -> None:
        while (item := await queue.get()) is not None:
            received.append((item, clock.elapsed))
            await clock.sleep(3)  # slower than the producer

    await asyncio.gather(consumer(), producer())
    assert received == [(0, 2), (1, 5), (2, 8), (3, 11), (4, 14)]


async def test_timeout_by_racing_clock_sleep() -> None:
    clock = VirtualClock()

    async def slow_work() -> str:
        await clock.sleep(300)
        return "done"

    work = asyncio.create_task(slow_work())
    timer = asyncio.create_task(clock.sleep(30))
    done, _ = await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {timer}
    assert clock.elapsed == 30
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    await clock.sleep(1)
    assert clock.elapsed == 31  # the cancelled 300s sleep never advanced time


async def test_works_through_module_level_clock_functions() -> None:
    clock = VirtualClock()
    token = _clock.use_clock(clock)
    try:
        await _clock.sleep(86_400)
        assert _clock.now() == at(86_400)
    finally:
        _clock.reset_clock(token)


# --- scale and multiple loops ----------------------------------------------------------


async def test_ten_thousand_sleepers() -> None:
    clock = VirtualClock()
    n = 10_000
    woke: list[tuple[int, int, datetime]] = []

    async def sleeper(i: int, d: int) -> None:
        await clock.sleep(d)
        woke.append((d, i, clock.now()))

    # durations 1..n shuffled (7919 is coprime to n), plus a tie group at 5000.
    durations = [(i * 7919) % n + 1 for i in range(n)] + [5000] * 50
    t0 = time.perf_counter()
    await asyncio.gather(*(sleeper(i, d) for i, d in enumerate(durations)))
    assert time.perf_counter() - t0 < 5
    assert [(d, i) for d, i, _ in woke] == sorted((d, i) for i, d in enumerate(durations))
    assert all(seen == at(d) for d, _, seen in woke)
    assert clock.elapsed == n
    assert clock.pending == 0


def test_same_clock_across_successive_event_loops() -> None:
    clock = VirtualClock()

    async def first() -> None:
        await clock.sleep(10)
        # Leave a sleeper behind: asyncio.run cancels it when the loop shuts down.
        leftover = asyncio.create_task(clock.sleep(1000))
        await asyncio.sleep(0)
        assert not leftover.done()

    async def second() -> None:
        woke: list[float] = []

        async def sleeper(d: float) -> None:
            await clock.sleep(d)
            woke.append(clock.elapsed)

        await asyncio.gather(sleeper(5), sleeper(2))
        assert woke == [12, 15]

    run(first())
    assert clock.elapsed == 10
    assert clock.pending == 0
    run(second())
    assert clock.elapsed == 15
    run(clock.sleep(1))
    assert clock.elapsed == 16


def test_clock_recovers_after_a_loop_closed_mid_sleep() -> None:
    clock = VirtualClock()
    coro = clock.sleep(1000)

    async def start_sleep_and_abandon() -> None:
        coro.send(None)  # registers the sleep; its checker is still queued on this loop

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start_sleep_and_abandon())
    finally:
        loop.close()
    coro.close()
    assert clock.pending == 0  # a sleep on a closed loop can never be woken
    run(clock.sleep(5))  # a fresh loop gets its own checker
    assert clock.elapsed == 5


# --- property ----------------------------------------------------------------------------

durations_st = st.lists(
    st.one_of(
        st.integers(min_value=-5, max_value=10**6),
        st.floats(min_value=-5, max_value=1e6, allow_nan=False),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=75, deadline=None)
@given(durations=durations_st)
def test_property_wake_order_and_final_time(durations: list[float]) -> None:
    clock = VirtualClock()
    woke: list[int] = []
    seen: dict[int, datetime] = {}

    async def sleeper(i: int, d: float) -> None:
        await clock.sleep(d)
        woke.append(i)
        seen[i] = clock.now()

    async def main() -> None:
        await asyncio.gather(*(sleeper(i, d) for i, d in enumerate(durations)))

    run(main())
    expected = sorted(range(len(durations)), key=lambda i: (max(durations[i], 0), i))
    assert woke == expected
    assert clock.elapsed == max(0, *durations)
    for i, d in enumerate(durations):
        assert seen[i] == at(max(d, 0))
    assert clock.pending == 0


@settings(max_examples=30, deadline=None)
@given(durations=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=10))
def test_property_chains_are_sums(durations: list[int]) -> None:
    """Each task sleeps its list of steps in turn; it wakes at each prefix sum."""
    clock = VirtualClock()
    log: list[tuple[int, int]] = []

    async def chain(k: int) -> None:
        total = 0
        for d in durations[k:]:
            await clock.sleep(d)
            total += d
            assert clock.elapsed == total
            log.append((total, k))

    async def main() -> None:
        await asyncio.gather(*(chain(k) for k in range(len(durations))))

    run(main())
    assert [t for t, _ in log] == sorted(t for t, _ in log)
    assert clock.elapsed == sum(durations)
