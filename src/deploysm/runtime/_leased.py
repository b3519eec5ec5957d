"""A store seen through one lease: every save carries the fencing token and the inbox
events the machine consumed since its last save."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..durable._snapshot import SerializableState
from ..stores._base import JournalEntry, JournalRecord, MachineInfo
from ..stores._runtime import RuntimeStore

__all__ = ["LeasedStore"]


class LeasedStore:
    """What a machine run by a worker writes through."""

    __slots__ = ("_consumed", "_store", "handback", "released", "token")

    def __init__(
        self, store: RuntimeStore, token: int, handback: asyncio.Event | None = None
    ) -> None:
        self._store = store
        self.token = token
        self.released = False  # the worker is handing the lease back
        self.handback = handback  # set: the worker stops; a retry delay hands the machine back
        self._consumed: list[int] = []

    def consume(self, seq: int) -> None:
        """Mark inbox event ``seq`` delivered with the machine's next save."""
        self._consumed.append(seq)

    def unconsumed(self) -> bool:
        return bool(self._consumed)

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
    ) -> None:
        taken = self._consumed
        self._consumed = []
        save: Any = self._store.save
        try:
            await save(
                snapshot,
                expected_version=expected_version,
                journal=journal,
                workflow=workflow,
                token=self.token,
                consumed=taken,
            )
        except BaseException:
            self._consumed = taken + self._consumed
            raise

    async def load(self, machine_id: str) -> SerializableState | None:
        return await self._store.load(machine_id)

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        return await self._store.journal(machine_id, after=after)

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        return await self._store.list(status)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None
