"""The per-machine lock: ``asyncio.Lock``'s first-come-first-served semantics, with a
synchronous fast path, since nearly every ``dispatch`` finds its machine free."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

__all__ = ["FifoLock"]


class FifoLock:
    """A mutex for one event loop; waiters acquire it in arrival order."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: collections.deque[asyncio.Future[None]] | None = None

    def locked(self) -> bool:
        return self._locked

    def try_acquire(self) -> bool:
        """Take the lock at once if it is free and nobody is queued for it."""
        if self._locked or self._waiters:
            return False
        self._locked = True
        return True

    async def acquire(self) -> bool:
        if self.try_acquire():
            return True
        if self._waiters is None:
            self._waiters = collections.deque()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            try:
                await fut
            finally:
                self._waiters.remove(fut)
        except asyncio.CancelledError:
            if not self._locked:  # woken, then cancelled: pass the turn on
                self._wake_first()
            raise
        self._locked = True
        return True

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("release of an unlocked FifoLock")
        self._locked = False
        if self._waiters:
            self._wake_first()

    def _wake_first(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        fut = waiters[0]
        if not fut.done():
            fut.set_result(None)

    async def __aenter__(self) -> None:
        if not self.try_acquire():
            await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        self.release()
