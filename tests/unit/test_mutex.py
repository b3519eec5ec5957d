"""The per-machine lock keeps asyncio.Lock's arrival order and cancellation rules."""

from __future__ import annotations

import asyncio

import pytest

from deploysm.engine._mutex import FifoLock


async def test_uncontended_acquire_is_immediate_and_release_frees() -> None:
    lock = FifoLock()
    assert lock.try_acquire()
    assert lock.locked()
    assert not lock.try_acquire()
    lock.release()
    assert not lock.locked()


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[int] = []

    async def worker(i: int) -> None:
        async with lock:
            order.append(i)
            await asyncio.sleep(0)

    await lock.acquire()
    tasks = [asyncio.create_task(worker(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert not lock.try_acquire()  # queued waiters come first, even when it is released
    lock.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    lock = FifoLock()
    await lock.acquire()
    first = asyncio.create_task(lock.acquire())
    second = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    lock.release()  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) is True
    assert lock.locked()
    lock.release()


async def test_a_waiter_cancelled_while_queued_leaves_the_queue() -> None:
    lock = FifoLock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release()
    assert lock.try_acquire()


def test_release_of_an_unlocked_lock_raises() -> None:
    with pytest.raises(RuntimeError):
        FifoLock().release()
