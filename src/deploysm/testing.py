"""Helpers for testing deployment machines.

:class:`VirtualClock` is the clock for tests. It implements the clock protocol
(``now()`` and ``async sleep(seconds)``) in virtual time: sleeps finish at once,
in deadline order. Virtual time advances only when no other task on the event loop
is ready to run; it then jumps to the earliest pending deadline. A cancelled sleep
never advances time::

    clock = VirtualClock()
    await clock.sleep(3600)  # returns immediately
    assert clock.elapsed == 3600.0

Caveats:

* Only ``clock.sleep`` is virtual. ``asyncio.sleep(n)`` with ``n > 0``,
  ``asyncio.wait_for``, ``asyncio.timeout``, ``loop.call_later``, I/O and threads run
  on real time and do not hold virtual time back: when a task waits on them and
  nothing else is ready, virtual time jumps to the next deadline. Express timeouts
  with the clock's own sleep, e.g. race the work against ``clock.sleep(t)`` using
  ``asyncio.wait(..., return_when=asyncio.FIRST_COMPLETED)``.
* Idleness is read from the event loop's private ready queue (``loop._ready``);
  on loops without one the clock lets a few loop iterations pass instead.
* Use a clock in one event loop at a time (successive loops are fine).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Sized
from datetime import UTC, datetime, timedelta

__all__ = ["VirtualClock"]

_DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
_FALLBACK_ROUNDS = 16  # loop iterations to wait when the ready queue is not visible


def _live(fut: asyncio.Future[None]) -> bool:
    return not fut.done() and not fut.get_loop().is_closed()


class VirtualClock:
    """A clock whose sleeps finish at once, in virtual time and deadline order.

    ``start`` must be an aware ``datetime`` (default 2025-01-01T00:00:00Z); naive
    values raise ``ValueError``. ``now()`` is always aware UTC.
    """

    __slots__ = ("_checker_loop", "_elapsed", "_heap", "_seq", "_start")

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = _DEFAULT_START
        elif start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"VirtualClock start must be timezone-aware, got {start!r}")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0
        # (deadline in elapsed seconds, registration number, future to resolve)
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        # The loop on which this clock's checker callback is scheduled, if any.
        self._checker_loop: asyncio.AbstractEventLoop | None = None

    @property
    def elapsed(self) -> float:
        """Virtual seconds since ``start``."""
        return self._elapsed

    @property
    def pending(self) -> int:
        """Number of sleeps waiting to be woken (cancelled ones not counted)."""
        return sum(1 for _, _, fut in self._heap if _live(fut))

    def now(self) -> datetime:
        """The current virtual time (aware UTC)."""
        return self._start + timedelta(seconds=self._elapsed)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of virtual time; ``seconds <= 0`` only yields once."""
        if math.isnan(seconds):
            raise ValueError("sleep duration must not be NaN")
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self._elapsed + seconds, next(self._seq), fut))
        if self._checker_loop is not loop:
            self._schedule_check(loop, 0)
        await fut

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by hand, waking due sleepers in deadline order.

        Woken sleepers resume after the caller next yields, and see the new time.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"advance needs a finite, non-negative duration, got {seconds!r}")
        target = self._elapsed + seconds
        while self._heap and self._heap[0][0] <= target:
            fut = heapq.heappop(self._heap)[2]
            if _live(fut):
                fut.set_result(None)
        self._elapsed = target

    def _schedule_check(self, loop: asyncio.AbstractEventLoop, rounds: int) -> None:
        self._checker_loop = loop
        loop.call_soon(self._check, loop, rounds)

    def _check(self, loop: asyncio.AbstractEventLoop, rounds: int) -> None:
        if self._checker_loop is not loop:
            return  # stale: superseded by a checker on another loop
        self._checker_loop = None
        heap = self._heap
        while heap and not _live(heap[0][2]):
            heapq.heappop(heap)  # cancelled sleeps never advance time
        if not heap or heap[0][0] == math.inf:
            return  # nothing to wake (infinite sleeps only end by cancellation)
        ready = getattr(loop, "_ready", None)
        if isinstance(ready, Sized):
            if len(ready):
                self._schedule_check(loop, 0)  # other work is ready: let it run first
                return
        elif rounds < _FALLBACK_ROUNDS:
            self._schedule_check(loop, rounds + 1)
            return
        deadline = heap[0][0]
        self._elapsed = max(self._elapsed, deadline)
        while heap and heap[0][0] == deadline:
            fut = heapq.heappop(heap)[2]
            if _live(fut):
                fut.set_result(None)
        if heap:
            self._schedule_check(loop, 0)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self.now().isoformat()}, pending={self.pending})"
