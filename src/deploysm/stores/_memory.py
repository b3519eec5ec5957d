"""An in-process store: the reference implementation of the protocol, for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .._snapshot import SerializableState
from ._base import Codec, JournalEntry, JournalRecord, JSONCodec, MachineInfo, conflict

__all__ = ["MemoryStore"]


class _Row:
    __slots__ = ("blob", "definition_id", "state", "status", "updated_at", "version", "workflow")

    def __init__(self, snap: SerializableState, blob: bytes, workflow: str | None) -> None:
        self.blob = blob
        self.version = snap.version
        self.status = snap.status
        self.state = snap.current_state.name
        self.definition_id = snap.definition_id
        self.workflow = workflow
        self.updated_at = datetime.now(UTC)


class MemoryStore:
    """Keeps everything in dictionaries; snapshots go through the codec like a real store,
    so what is loaded is always a validated copy."""

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec: Codec = codec if codec is not None else JSONCodec()
        self._rows: dict[str, _Row] = {}
        self._journal: list[JournalEntry] = []
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load(self, machine_id: str) -> SerializableState | None:
        row = self._rows.get(machine_id)
        if row is None:
            return None
        return SerializableState.from_dict(self.codec.decode(machine_id, row.blob))

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
    ) -> None:
        mid = snapshot.machine_id
        blob = self.codec.encode(mid, snapshot.to_dict())
        async with self._lock:
            row = self._rows.get(mid)
            found = row.version if row is not None else None
            if found != expected_version:
                raise conflict(mid, expected_version, found)
            new = _Row(snapshot, blob, workflow if workflow is not None else _wf(row))
            self._rows[mid] = new
            seq = len(self._journal)
            for rec in journal:
                seq += 1
                self._journal.append(
                    JournalEntry(seq, mid, snapshot.version, rec.kind, rec.at, dict(rec.data))
                )

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        return [e for e in self._journal if e.machine_id == machine_id and e.seq > after]

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        return [
            MachineInfo(
                mid, r.workflow, r.definition_id, r.status, r.state, r.version, r.updated_at
            )
            for mid, r in sorted(self._rows.items())
            if status is None or r.status == status
        ]


def _wf(row: Any) -> str | None:
    return row.workflow if row is not None else None
