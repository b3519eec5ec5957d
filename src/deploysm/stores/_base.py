"""The store protocol every backend implements, and the records it deals in."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState

__all__ = [
    "AsyncOpenClose",
    "Codec",
    "JSONCodec",
    "JournalEntry",
    "JournalRecord",
    "MachineInfo",
    "Store",
    "conflict",
    "encode_snapshot",
    "error_text",
]


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One fact to append to a machine's journal, written with the snapshot it explains."""

    kind: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A journal record as stored: numbered, and tied to the snapshot version it came with."""

    seq: int
    machine_id: str
    version: int
    kind: str
    at: datetime
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """What ``list()`` tells about a machine without decoding its snapshot.

    ``last_error``: the snapshot's last error as one line, ``"CODE: message"``
    (``None`` when it has none), written by ``save`` beside the snapshot."""

    machine_id: str
    workflow: str | None
    definition_id: str
    status: str
    state: str
    version: int
    updated_at: datetime
    last_error: str | None = None


def error_text(record: Mapping[str, Any] | None) -> str | None:
    """A snapshot's ``last_error`` record as the text ``list()`` returns."""
    if not record:
        return None
    message = str(record.get("message") or "")
    code = record.get("code")
    if code:
        return f"{code}: {message}" if message else str(code)
    return message or str(record.get("type") or "error")


@runtime_checkable
class Codec(Protocol):
    """Turns a snapshot's ``to_dict()`` into stored bytes and back, for one machine id."""

    def encode(self, machine_id: str, data: Mapping[str, Any]) -> bytes: ...

    def decode(self, machine_id: str, blob: bytes) -> dict[str, Any]: ...


class JSONCodec:
    """Plain compact JSON (the default)."""

    __slots__ = ()

    def encode(self, machine_id: str, data: Mapping[str, Any]) -> bytes:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()

    def _encode_text(self, machine_id: str, text: str) -> bytes:
        return text.encode()

    def decode(self, machine_id: str, blob: bytes) -> dict[str, Any]:
        try:
            data = json.loads(blob)
        except (ValueError, TypeError, RecursionError) as e:
            raise StateMachineError(
                f"stored snapshot of {machine_id!r} is not valid JSON: {e}",
                ErrorCode.INVALID_SNAPSHOT,
            ) from e
        if not isinstance(data, dict):
            raise StateMachineError(
                f"stored snapshot of {machine_id!r} is not an object", ErrorCode.INVALID_SNAPSHOT
            )
        return data


# Codecs whose ``encode(machine_id, data)`` is ``_encode_text(machine_id, <data as
# compact JSON>)``: exact types only, so a subclass that overrides ``encode`` still
# gets the dict. ``_crypto`` adds ``EncryptedCodec``.
TEXT_CODECS: dict[type[Any], Callable[[Any, str, str], bytes]] = {
    JSONCodec: JSONCodec._encode_text,
}


def encode_snapshot(codec: Codec, snapshot: SerializableState) -> bytes:
    """What ``codec.encode(snapshot.machine_id, snapshot.to_dict())`` returns.

    For the built-in codecs it encodes ``snapshot.to_json()`` instead, the same text,
    which a snapshot from the engine assembles mostly from its machine's cache."""
    encode_text = TEXT_CODECS.get(type(codec))
    if encode_text is None:
        return codec.encode(snapshot.machine_id, snapshot.to_dict())
    return encode_text(codec, snapshot.machine_id, snapshot.to_json())


@runtime_checkable
class Store(Protocol):
    """Durable home of machines: compare-and-set snapshots plus an append-only journal.

    Every method is safe to call from several tasks at once. ``save`` is atomic:
    the snapshot and its journal records are written together or not at all.
    """

    async def open(self) -> None:
        """Connect and apply schema migrations (idempotent)."""
        ...

    async def close(self) -> None: ...

    async def load(self, machine_id: str) -> SerializableState | None:
        """The machine's latest snapshot, validated; ``INVALID_SNAPSHOT`` if it is bad."""
        ...

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
    ) -> int | None:
        """Write ``snapshot`` if the stored version is ``expected_version`` (``None``: the
        machine must not exist yet); otherwise raise ``CONFLICT`` and write nothing.
        Returns ``None`` (a runtime store given a ``lease``: the fencing token).

        A store encodes ``snapshot`` before its first ``await``: the engine hands over
        its live lists rather than copies."""
        ...

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        """The machine's journal in order, entries with ``seq > after``."""
        ...

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        """Every machine (or those with ``status``), ordered by id."""
        ...


class AsyncOpenClose:
    """``async with store:`` opens the store on entry and closes it on exit."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def conflict(machine_id: str, expected: int | None, found: int | None) -> StateMachineError:
    if found is None:
        msg = f"machine {machine_id!r} does not exist in the store (expected version {expected})"
    elif expected is None:
        msg = f"machine {machine_id!r} already exists (version {found}); resume() it instead"
    else:
        msg = (
            f"machine {machine_id!r} was changed by another writer: expected version "
            f"{expected}, found {found}; nothing was written"
        )
    return StateMachineError(msg, ErrorCode.CONFLICT)
