"""The ``RuntimeStore`` half of ``SQLiteStore``: starts, inboxes, leases, claims, wake-ups.

Every write (``start``, ``send``, ``request_cancel``, ``claim``, ``renew``,
``release``, parking (see ``_sqlite_parking``), and the lease checks of ``save``) is
ONE operation on the writer thread, run inside the batch's ``BEGIN IMMEDIATE``
transaction: SQLite lets one writer at a time into a file, so a claim's read of the
candidates and its update of their leases cannot interleave with another claim, in
this process or in any other. Two workers can therefore never hold the same machine,
and a duplicate event id lands once.

Which machines have work, claims, renewals and lease times are in ``_sqlite_claims``.

Wake-ups: SQLite cannot notify another process. ``wait_for_work`` returns at once
when this same store object ran ``start``/``send``/``request_cancel``/``release``
(from any event loop), as ``MemoryStore`` does. Other processes (and other store
objects) are seen by polling, every ``poll_interval_s`` (50 ms): ``PRAGMA
data_version``, a cheap read, changes when another connection commits; only then does
it look (with indexed queries) for work that a claim of the workflows of the store's
last ``claim`` would take, and it returns if there is some. So work sent from another
process is seen within about one poll interval, and a poll costs no write. Like
``MemoryStore``, it does not return by itself when a timer (``wake_at``) comes due or
a lease expires: the worker's next claim, ``max_wait_s`` later, takes those.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from ._base import Codec, conflict
from ._parking import parked_error
from ._runtime import (
    Claim,
    InboxEvent,
    already_finished,
    context_object,
    event_fields,
    inbox_event,
    unknown_machine,
)
from ._sealed import error_column, seal, unseal
from ._sqlite_claims import claim_op, data_version, leased_op, probe, renew_op, to_us
from ._sqlite_parking import park_held, unpark_row
from ._sqlite_writer import utc_text

__all__ = ["POLL_INTERVAL_S", "SQLiteRuntime", "Wakeups", "to_us"]

T = TypeVar("T")
POLL_INTERVAL_S = 0.05
_FINISHED = ("completed", "failed", "cancelled")

# --------------------------------------------------------------------------- SQL

_START = (
    "INSERT INTO machines (id, workflow, definition_id, status, state, version, snapshot,"
    " created_at, updated_at, start_context) VALUES (?1, ?2, '', 'active', '', 0, NULL,"
    " ?3, ?3, ?4) ON CONFLICT (id) DO NOTHING"
)
_SEND = (
    "INSERT INTO inbox (machine_id, event_id, type, payload, correlation_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# Machines with work, each source on an index of its own (no scan of every active
# machine; INDEXED BY: without statistics the planner would pick machines_status),
# then those whose lease is free or expired.
_RELEASE = (
    "UPDATE machines SET lease_owner = NULL, lease_expires_at = NULL, wake_at = ?"
    " WHERE id = ? AND fencing_token = ?"
)
_NEXT_EVENT = (
    "SELECT seq, event_id, type, payload, correlation_id, created_at FROM inbox"
    " WHERE machine_id = ? AND delivered_at IS NULL ORDER BY seq LIMIT 1"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# ------------------------------------------------------------ on the writer thread


def _start(conn: sqlite3.Connection, workflow: str, mid: str, context: str | bytes) -> None:
    if conn.execute(_START, (mid, workflow, utc_text(), context)).rowcount != 1:
        (found,) = conn.execute("SELECT version FROM machines WHERE id = ?", (mid,)).fetchone()
        raise conflict(mid, None, found)


def _send(
    conn: sqlite3.Connection,
    mid: str,
    event_id: str,
    fields: dict[str, Any],
    sealed: bytes | None = None,
) -> bool:
    row = conn.execute("SELECT status FROM machines WHERE id = ?", (mid,)).fetchone()
    if row is None:
        raise unknown_machine(mid)
    seen = "SELECT 1 FROM inbox WHERE machine_id = ? AND event_id = ?"
    if conn.execute(seen, (mid, event_id)).fetchone() is not None:
        return False  # sent before (delivered or not): de-duplicated
    if row[0] in _FINISHED:
        raise StateMachineError(
            f"machine {mid!r} is {row[0]}; it takes no more events", ErrorCode.NOT_ACTIVE
        )
    values: tuple[Any, ...]
    if sealed is not None:  # the payload and the correlation id, through the codec
        values = (mid, event_id, fields["type"], sealed, None, utc_text())
    else:
        payload = _dumps(fields["payload"]) if "payload" in fields else None
        values = (mid, event_id, fields["type"], payload, fields.get("correlation_id"), utc_text())
    conn.execute(_SEND, values)
    return True


def _request_cancel(conn: sqlite3.Connection, mid: str) -> None:
    sql = (
        "UPDATE machines SET cancel_requested = 1"
        " WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')"
    )
    if conn.execute(sql, (mid,)).rowcount != 1:
        row = conn.execute("SELECT status FROM machines WHERE id = ?", (mid,)).fetchone()
        raise unknown_machine(mid) if row is None else already_finished(mid, row[0])


# ------------------------------------------------------------ reads (inline)


def _next_event(conn: sqlite3.Connection, mid: str, codec: Codec) -> InboxEvent | None:
    row = conn.execute(_NEXT_EVENT, (mid,)).fetchone()
    if row is None:
        return None
    seq, event_id, type_, payload, correlation_id, at = row
    fields: dict[str, Any] = {"type": type_}
    if isinstance(payload, bytes):
        fields.update(unseal(codec, mid, payload, f"event {event_id!r}"))
    elif payload is not None:
        fields["payload"] = json.loads(payload)
    if correlation_id is not None:
        fields["correlation_id"] = correlation_id
    return inbox_event(seq, event_id, fields, datetime.fromisoformat(at))


# ------------------------------------------------------------------ wake-ups


class Wakeups:
    """Futures of ``wait_for_work`` callers, on any event loop; ``notify`` wakes them."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()

    def add(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def discard(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            if not waiter.done():
                with suppress(RuntimeError):  # its loop is closed
                    waiter.get_loop().call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# ------------------------------------------------------------------ the mixin


class SQLiteRuntime:
    """The ``RuntimeStore`` methods of ``SQLiteStore`` (see the module docstring)."""

    poll_interval_s: float = POLL_INTERVAL_S
    _wakeups: Wakeups
    _claiming: str | None = None  # the workflows of this store's last claim, as JSON
    _claimed_at: int | None = None  # the reader's data_version right after that claim
    codec: Codec
    _seals: bool

    if TYPE_CHECKING:

        def _decode_snapshot(self, machine_id: str, blob: Any) -> SerializableState: ...
        async def run_write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
        async def run_read(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _writable(self) -> None: ...

    def _error_column(self, machine_id: str, text: str | None) -> str | bytes | None:
        return error_column(self.codec, machine_id, text)

    def _start_context(self, machine_id: str, stored: Any) -> Any:
        if isinstance(stored, bytes):
            return unseal(self.codec, machine_id, stored, "the start context").get("context")
        return json.loads(stored)

    async def start(self, workflow: str, machine_id: str, context: Any) -> None:
        """Create a machine for a worker to run (no snapshot until its first run; ``load``
        returns ``None`` until then). An existing id is ``CONFLICT``."""
        value = context_object(context)
        try:
            data: str | bytes = _dumps(value)
        except (TypeError, ValueError) as e:
            raise StateMachineError(f"context cannot be stored: {e}", "INVALID_CONTEXT") from e
        await self._writable()
        if self._seals:
            data = seal(self.codec, machine_id, {"context": value})
        await self.run_write(lambda c: _start(c, workflow, machine_id, data))
        self._wakeups.notify()

    async def send(self, machine_id: str, event: Any, event_id: str | None = None) -> bool:
        """Append ``event`` to the machine's inbox; ``False`` if ``event_id`` was sent to
        this machine before (even if delivered since). Unknown machine:
        ``UNKNOWN_MACHINE``; a finished one: ``NOT_ACTIVE``."""
        event_id, fields = event_fields(event, event_id)
        await self._writable()
        sealed = None
        if self._seals:
            extra = {k: v for k, v in fields.items() if k != "type"}
            sealed = seal(self.codec, machine_id, extra)
        added: bool = await self.run_write(lambda c: _send(c, machine_id, event_id, fields, sealed))
        if added:
            self._wakeups.notify()
        return added

    async def request_cancel(self, machine_id: str) -> None:
        """Flag the machine for cancellation by whichever worker runs it next."""
        await self.run_write(lambda c: _request_cancel(c, machine_id))
        self._wakeups.notify()

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        workflows: Collection[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` active machines with work whose lease is free or expired
        (in id order; of ``workflows`` only, when given), bumping each one's fencing
        token and clearing its timer. ``wait_for_work`` then looks for work of the same
        workflows."""
        wfs = None if workflows is None else _dumps(sorted(workflows))
        self._claiming = wfs
        if limit <= 0 or wfs == "[]":
            self._claimed_at = await self.run_read(data_version)
            return []
        decode, ctx, err = self._decode_snapshot, self._start_context, self._error_column
        out = await self.run_write(
            lambda c: claim_op(c, decode, ctx, err, worker_id, limit, lease_ms, wfs)
        )
        # what wait_for_work compares with: a commit from now on may bring new work
        self._claimed_at = await self.run_read(data_version)
        return out

    async def leased_elsewhere(
        self, worker_id: str, workflows: Collection[str] | None = None
    ) -> list[tuple[str, str, datetime]]:
        """Machines with work that a claim of ``workflows`` would take but for another
        owner's live lease: (machine id, that owner, when its lease ends), by id."""
        wfs = None if workflows is None else _dumps(sorted(workflows))
        return await self.run_read(lambda c: leased_op(c, worker_id, wfs))

    async def park(self, machine_id: str, token: int, error: StateMachineError) -> bool:
        """Park a machine held by lease ``token`` that cannot be run (see ``_parking``);
        ``False`` (nothing written) when that lease is no longer held."""
        column = self._error_column(machine_id, parked_error(error))
        return await self.run_write(lambda c: park_held(c, machine_id, token, error, column))

    async def unpark(self, machine_id: str) -> SerializableState | None:
        """Put a machine a claim parked back (see ``_parking``); ``INVALID_SNAPSHOT`` while
        its snapshot (or, never run, its start context) still cannot be read,
        ``NOT_PARKED`` if no claim parked it. Returns the snapshot (``None``: never run)."""
        decode, ctx, err = self._decode_snapshot, self._start_context, self._error_column
        snap = await self.run_write(lambda c: unpark_row(c, decode, ctx, err, machine_id))
        self._wakeups.notify()
        return snap

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        """Extend the leases still held (same token and owner); return the lost ids."""
        held = dict(leases)
        if not held:
            return set()
        return await self.run_write(lambda c: renew_op(c, worker_id, held, lease_ms))

    async def release(self, machine_id: str, token: int, *, wake_at: datetime | None) -> bool:
        """Give the lease back; claimable again from ``wake_at`` on (``None``: only when
        work arrives). ``False`` if ``token`` is no longer the machine's."""
        values = (None if wake_at is None else to_us(wake_at), machine_id, token)
        released = await self.run_write(lambda c: c.execute(_RELEASE, values).rowcount == 1)
        if released:
            self._wakeups.notify()
        return released

    async def next_event(self, machine_id: str) -> InboxEvent | None:
        """The oldest undelivered event of the machine (``None``: none, or no machine)."""
        return await self.run_read(lambda c: _next_event(c, machine_id, self.codec))

    async def cancel_requested(self, machine_id: str) -> bool:
        """Whether ``request_cancel`` was called for the machine."""
        sql = "SELECT cancel_requested FROM machines WHERE id = ?"
        row = await self.run_read(lambda c: c.execute(sql, (machine_id,)).fetchone())
        return row is not None and bool(row[0])

    async def wait_for_work(self, max_wait_s: float) -> None:
        """Return when there may be work, or after ``max_wait_s``: as soon as this store
        object started, sent to, cancelled or released a machine (from any event loop);
        otherwise when a poll (every ``poll_interval_s``) sees that another connection
        committed since this store's last ``claim`` and that a claim of the same
        workflows would now take a machine. Other processes are seen only by polling:
        SQLite has no cross-process notifications."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        waiter: asyncio.Future[None] = loop.create_future()
        self._wakeups.add(waiter)
        try:
            seen = self._claimed_at
            if seen is None:
                seen = await self.run_read(data_version)
            while (remaining := deadline - loop.time()) > 0:
                done, _ = await asyncio.wait({waiter}, timeout=min(remaining, self.poll_interval_s))
                if done:
                    return
                if await self.run_read(data_version) == seen:
                    continue
                seen, work = await self.run_read(partial(probe, wfs=self._claiming))
                if work:
                    return
        finally:
            self._wakeups.discard(waiter)
            if not waiter.done():
                waiter.cancel()
