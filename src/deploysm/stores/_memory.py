"""An in-process store: the reference implementation of the protocol, for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..core._clock import Clock
from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from . import _parking as parking
from ._base import (
    AsyncOpenClose,
    Codec,
    JournalEntry,
    JournalRecord,
    JSONCodec,
    MachineInfo,
    conflict,
    encode_snapshot,
    error_text,
)
from ._parking import (
    PARKED,
    UNPARKED,
    UNREADABLE,
    check_snapshot,
    check_unpark,
    log_parked,
    parked_error,
    reason,
)
from ._prune import FINISHED, PruneCounts, cutoff
from ._runtime import (
    Claim,
    InboxEvent,
    Lease,
    LeaseHeld,
    already_finished,
    context_object,
    event_fields,
    holds_lease,
    inbox_event,
    lease_lost,
    unknown_machine,
)
from ._sqlite import _decode

__all__ = ["MemoryStore"]

_FINISHED = ("completed", "failed", "cancelled")


class _Row:
    __slots__ = (
        "blob",
        "busy",
        "cancel",
        "context",
        "definition_id",
        "error",
        "inbox",
        "lease_owner",
        "lease_until",
        "seen",
        "state",
        "status",
        "token",
        "updated_at",
        "version",
        "wake_at",
        "workflow",
    )

    def __init__(self, workflow: str | None) -> None:
        self.blob: bytes | None = None
        self.version = 0
        self.status = "active"
        self.state = ""
        self.definition_id = ""
        self.error: str | None = None
        self.workflow = workflow
        self.updated_at = _now()
        self.context: Any = None
        self.busy = False
        self.cancel = False
        self.inbox: list[tuple[int, str, dict[str, Any], datetime]] = []
        self.seen: dict[str, datetime | None] = {}  # event id -> delivered at (None: not yet)
        self.lease_owner: str | None = None
        self.lease_until: datetime | None = None
        self.token = 0
        self.wake_at: datetime | None = None

    def take(self, snap: SerializableState, blob: bytes, workflow: str | None) -> None:
        self.blob = blob
        self.version = snap.version
        self.status = snap.status
        self.state = snap.current_state.name
        self.definition_id = snap.definition_id
        self.error = error_text(snap.last_error)
        self.busy = snap.in_flight is not None
        if workflow is not None:
            self.workflow = workflow
        self.updated_at = _now()

    def leased(self, now: datetime) -> bool:
        return (
            self.lease_owner is not None
            and self.lease_until is not None
            and (self.lease_until > now)
        )

    def has_work(self, now: datetime) -> bool:
        return (
            self.blob is None
            or self.busy
            or self.cancel
            or bool(self.inbox)
            or (self.wake_at is not None and self.wake_at <= now)
        )


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryStore(AsyncOpenClose):
    """Keeps everything in dictionaries; snapshots go through the codec like a real store,
    so what is loaded is always a validated copy. Leases expire by ``clock`` (the wall
    clock by default; a test may pass a ``VirtualClock``)."""

    def __init__(self, codec: Codec | None = None, *, clock: Clock | None = None) -> None:
        self.codec: Codec = codec if codec is not None else JSONCodec()
        self._time = clock.now if clock is not None else _now
        self._rows: dict[str, _Row] = {}
        self._journal: list[JournalEntry] = []
        self._lock = asyncio.Lock()
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load(self, machine_id: str) -> SerializableState | None:
        row = self._rows.get(machine_id)
        if row is None or row.blob is None:
            return None
        return SerializableState.from_dict(self.codec.decode(machine_id, row.blob))

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
        token: int | None = None,
        consumed: Sequence[int] = (),
        lease: Lease | None = None,
    ) -> int | None:
        mid = snapshot.machine_id
        blob = encode_snapshot(self.codec, snapshot)
        async with self._lock:
            row = self._rows.get(mid)
            now = self._time()
            if row is not None:  # the lease is checked first: a fenced-out writer learns why
                if token is not None and row.token != token:
                    raise lease_lost(mid, token)
                if token is None and row.leased(now):
                    if lease is None:
                        raise lease_lost(mid, None)
                    if lease.evict is None or row.lease_owner != lease.evict:
                        raise LeaseHeld(mid, row.lease_owner, row.lease_until)
            found = row.version if row is not None else None
            if found != expected_version:
                raise conflict(mid, expected_version, found)
            if row is None:
                row = self._rows[mid] = _Row(workflow)
            row.take(snapshot, blob, workflow)
            if lease is not None:
                if not holds_lease(snapshot):
                    row.lease_owner = row.lease_until = None
                else:
                    row.lease_owner = lease.owner
                    row.lease_until = now + timedelta(milliseconds=lease.ms)
                    if token is None:  # taking it
                        row.token += 1
            if consumed:
                gone, now = set(consumed), _now()
                for m in row.inbox:
                    if m[0] in gone:
                        row.seen[m[1]] = now
                row.inbox = [m for m in row.inbox if m[0] not in gone]
            for rec in journal:
                self._seq += 1
                row_data = dict(rec.data)
                self._journal.append(
                    JournalEntry(self._seq, mid, snapshot.version, rec.kind, rec.at, row_data)
                )
            return row.token if lease is not None else None

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        return [e for e in self._journal if e.machine_id == machine_id and e.seq > after]

    # ---------------------------------------------------------------- runtime

    async def start(self, workflow: str, machine_id: str, context: Any) -> None:
        data = context_object(context)
        async with self._lock:
            if machine_id in self._rows:
                raise conflict(machine_id, None, self._rows[machine_id].version)
            row = self._rows[machine_id] = _Row(workflow)
            row.context = data
        self._notify()

    async def send(self, machine_id: str, event: Any, event_id: str | None = None) -> bool:
        event_id, fields = event_fields(event, event_id)
        async with self._lock:
            row = self._rows.get(machine_id)
            if row is None:
                raise unknown_machine(machine_id)
            if event_id in row.seen:
                return False
            if row.status in _FINISHED:
                raise StateMachineError(
                    f"machine {machine_id!r} is {row.status}; it takes no more events",
                    ErrorCode.NOT_ACTIVE,
                )
            self._seq += 1
            row.seen[event_id] = None
            row.inbox.append((self._seq, event_id, fields, _now()))
        self._notify()
        return True

    async def request_cancel(self, machine_id: str) -> None:
        async with self._lock:
            row = self._rows.get(machine_id)
            if row is None:
                raise unknown_machine(machine_id)
            if row.status in _FINISHED:
                raise already_finished(machine_id, row.status)
            row.cancel = True
        self._notify()

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        workflows: Collection[str] | None = None,
    ) -> list[Claim]:
        now = self._time()
        out: list[Claim] = []
        async with self._lock:
            for mid, row in sorted(self._rows.items()):
                if len(out) >= limit:
                    break
                if row.status != "active" or row.leased(now) or not row.has_work(now):
                    continue
                if workflows is not None and (row.workflow or row.definition_id) not in workflows:
                    continue
                snap = None
                if row.blob is not None:
                    try:
                        snap = _decode(self.codec, mid, row.blob)
                    except StateMachineError as e:
                        self._park(mid, row, e)
                        continue
                old, row.lease_owner = row.lease_owner, worker_id
                row.lease_until = now + timedelta(milliseconds=lease_ms)
                row.token += 1
                row.wake_at = None
                wf = row.workflow or row.definition_id
                out.append(Claim(mid, wf, row.token, snap, row.context, row.cancel, old))
        return out

    async def leased_elsewhere(
        self, worker_id: str, workflows: Collection[str] | None = None
    ) -> list[tuple[str, str, datetime]]:
        """Machines with work that a claim of ``workflows`` would take but for another
        owner's live lease: (machine id, that owner, when its lease ends), by id."""
        now = self._time()
        async with self._lock:
            return [
                (mid, row.lease_owner, row.lease_until)
                for mid, row in sorted(self._rows.items())
                if row.status == "active"
                and row.lease_owner is not None
                and row.lease_owner != worker_id
                and row.lease_until is not None
                and row.lease_until > now
                and row.has_work(now)
                and (workflows is None or (row.workflow or row.definition_id) in workflows)
            ]

    def _park(self, mid: str, row: _Row, error: StateMachineError) -> None:
        row.status, row.error = PARKED, parked_error(error)
        self._note(mid, row.version, UNREADABLE, reason(error))
        log_parked(mid, error)

    async def park(self, machine_id: str, token: int, error: StateMachineError) -> bool:
        """Park a machine held by lease ``token`` that cannot be run (see ``_parking``);
        ``False`` (nothing written) when that lease is no longer held."""
        async with self._lock:
            row = self._free(machine_id, token)
            if row is not None:
                row.status, row.error = PARKED, parked_error(error)
                self._note(machine_id, row.version, parking.UNRUNNABLE, reason(error))
        return row is not None

    def _free(self, machine_id: str, token: int) -> _Row | None:
        """The row whose lease ``token`` is, its lease given back (``None``: not held)."""
        row = self._rows.get(machine_id)
        if row is None or row.token != token:
            return None
        row.lease_owner = None
        row.lease_until = None
        return row

    def _note(self, mid: str, version: int, kind: str, data: dict[str, Any]) -> None:
        self._seq += 1
        self._journal.append(JournalEntry(self._seq, mid, version, kind, _now(), data))

    async def unpark(self, machine_id: str) -> SerializableState | None:
        """Put a machine a claim parked back (see ``_parking``); ``INVALID_SNAPSHOT`` while
        its snapshot still cannot be read, ``NOT_PARKED`` if no claim parked it.
        Returns the snapshot (``None``: never run)."""
        async with self._lock:
            row = self._rows.get(machine_id)
            if row is None:
                raise unknown_machine(machine_id)
            check_unpark(machine_id, row.status, row.blob is not None or row.workflow is not None)
            snap = None if row.blob is None else _decode(self.codec, machine_id, row.blob)
            if snap is not None:
                check_snapshot(snap)
            row.status = "active" if snap is None else snap.status
            row.error = None if snap is None else error_text(snap.last_error)
            self._note(machine_id, row.version, UNPARKED, {"status": row.status})
        self._notify()
        return snap

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        now = self._time()
        lost: set[str] = set()
        async with self._lock:
            for mid, token in leases.items():
                row = self._rows.get(mid)
                if row is None or row.token != token or row.lease_owner != worker_id:
                    lost.add(mid)
                    continue
                row.lease_until = now + timedelta(milliseconds=lease_ms)
        return lost

    async def release(self, machine_id: str, token: int, *, wake_at: datetime | None) -> bool:
        async with self._lock:
            row = self._free(machine_id, token)
            if row is None:
                return False
            row.wake_at = wake_at
        self._notify()
        return True

    async def next_event(self, machine_id: str) -> InboxEvent | None:
        row = self._rows.get(machine_id)
        if row is None or not row.inbox:
            return None
        seq, event_id, fields, at = row.inbox[0]
        return inbox_event(seq, event_id, fields, at)

    async def cancel_requested(self, machine_id: str) -> bool:
        row = self._rows.get(machine_id)
        return row is not None and row.cancel

    async def wait_for_work(self, max_wait_s: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max_wait_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    async def prune(self, older_than: timedelta) -> PruneCounts:
        """Remove old journal entries of finished machines and old delivered events
        (see ``_prune``)."""
        before = cutoff(older_than)
        async with self._lock:
            done = {mid for mid, r in self._rows.items() if r.status in FINISHED}
            kept = [
                e
                for e in self._journal
                if e.machine_id not in done
                or (e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC)) >= before
            ]
            journal, self._journal = len(self._journal) - len(kept), kept
            inbox = 0
            for row in self._rows.values():
                old = [eid for eid, at in row.seen.items() if at is not None and at < before]
                for eid in old:
                    del row.seen[eid]
                inbox += len(old)
        return PruneCounts(journal, inbox)

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        return [
            MachineInfo(
                mid,
                r.workflow,
                r.definition_id,
                r.status,
                r.state,
                r.version,
                r.updated_at,
                r.error,
            )
            for mid, r in sorted(self._rows.items())
            if status is None or r.status == status
        ]

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
