"""The ``RuntimeStore`` half of ``PostgresStore``: starts, inboxes, claims, leases,
parking, wake-ups.

Each call is one statement of ``sql/postgres/queries.sql`` in its own transaction
(autocommit); ``start``/``send``/``request_cancel``/``release``/``unpark`` notify
(``pg_notify``) in that same transaction, and ``wait_for_work`` listens on a dedicated
connection (``_postgres_sql.Listener``). Claims lease with ``FOR UPDATE SKIP LOCKED``
and bump the fencing token; leases and timers use the database clock.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg.types.json import Jsonb

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from . import _parking as parking
from ._base import Codec, conflict, error_text
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
from ._postgres_sql import CHANNEL, Listener, utc
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
from ._sqlite import _decode

__all__ = ["PostgresRuntime"]


class PostgresRuntime:
    """The ``RuntimeStore`` methods of ``PostgresStore`` (see the module docstring)."""

    dsn: str
    codec: Codec
    _seals: bool
    _q: dict[str, LiteralString]
    _listener: Listener | None

    if TYPE_CHECKING:

        def _conn(
            self, doing: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...
        async def _fetchone(self, name: str, params: Any, doing: str) -> tuple[Any, ...] | None: ...
        async def _fetchall(self, name: str, params: Any, doing: str) -> list[tuple[Any, ...]]: ...
        async def _writable(self) -> None: ...

    async def start(self, workflow: str, machine_id: str, context: Any) -> None:
        data = context_object(context)
        try:
            text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise StateMachineError(f"context cannot be stored: {e}", "INVALID_CONTEXT") from e
        await self._writable()
        sealed = seal(self.codec, machine_id, {"context": data}) if self._seals else None
        params = {
            "id": machine_id,
            "workflow": workflow,
            "context": None if sealed else text,
            "sealed": sealed,
            "channel": CHANNEL,
        }
        async with self._conn(f"starting {machine_id!r}") as conn:
            cur = await conn.execute(self._q["start"], params)
            if cur.rowcount == 1:
                return
            cur = await conn.execute(self._q["save_found"], {"id": machine_id})
            row = await cur.fetchone()
        raise conflict(machine_id, None, None if row is None else int(row[0]))

    async def send(self, machine_id: str, event: Any, event_id: str | None = None) -> bool:
        event_id, fields = event_fields(event, event_id)
        await self._writable()
        payload = fields.get("payload")
        text = None if payload is None else json.dumps(payload, separators=(",", ":"))
        params = {
            "id": machine_id,
            "event_id": event_id,
            "type": fields["type"],
            "payload": text,
            "correlation_id": fields.get("correlation_id"),
            "sealed": None,
            "channel": CHANNEL,
        }
        if self._seals:  # the payload and the correlation id, through the codec
            extra = {k: v for k, v in fields.items() if k != "type"}
            params.update(payload=None, correlation_id=None)
            params["sealed"] = seal(self.codec, machine_id, extra)
        row = await self._fetchone("send", params, f"sending an event to {machine_id!r}")
        if row is None:
            raise unknown_machine(machine_id)
        status, seen, added = row
        if added:
            return True
        if not seen and status in ("completed", "failed", "cancelled"):
            raise StateMachineError(
                f"machine {machine_id!r} is {status}; it takes no more events",
                ErrorCode.NOT_ACTIVE,
            )
        return False

    async def request_cancel(self, machine_id: str) -> None:
        params = {"id": machine_id, "channel": CHANNEL}
        async with self._conn(f"cancelling {machine_id!r}") as conn:
            cur = await conn.execute(self._q["request_cancel"], params)
            if cur.rowcount == 1:
                return
            cur = await conn.execute(self._q["status"], {"id": machine_id})
            row = await cur.fetchone()
        raise unknown_machine(machine_id) if row is None else already_finished(machine_id, row[0])

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        workflows: Collection[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` machines with work (see the protocol), of ``workflows``
        only when given. A claimed row whose snapshot cannot be decoded is parked (see
        ``_parking``) rather than failing the other claims."""
        if limit <= 0:
            return []
        params = {
            "worker": worker_id,
            "limit": limit,
            "lease_ms": lease_ms,
            "workflows": None if workflows is None else sorted(workflows),
        }
        rows = await self._fetchall("claim", params, "claiming machines")
        out: list[Claim] = []
        for mid, workflow, token, blob, context, cancel, sealed, old in sorted(rows):
            try:
                snap = None if blob is None else _decode(self.codec, mid, blob)
                if sealed is not None:
                    context = unseal(self.codec, mid, sealed, "the start context").get("context")
            except StateMachineError as e:
                await self._park(mid, int(token), e, UNREADABLE)
                log_parked(mid, e)
                continue
            out.append(Claim(mid, workflow or "", int(token), snap, context, bool(cancel), old))
        return out

    async def leased_elsewhere(
        self, worker_id: str, workflows: Collection[str] | None = None
    ) -> list[tuple[str, str, datetime]]:
        """Machines with work that a claim of ``workflows`` would take but for another
        owner's live lease: (machine id, that owner, when its lease ends), by id."""
        params = {
            "worker": worker_id,
            "workflows": None if workflows is None else sorted(workflows),
        }
        rows = await self._fetchall("leased_elsewhere", params, "reading the leases of others")
        return [(mid, owner, until.astimezone(UTC)) for mid, owner, until in rows]

    async def park(self, machine_id: str, token: int, error: StateMachineError) -> bool:
        """Park a machine held by lease ``token`` that cannot be run (see ``_parking``);
        ``False`` (nothing written) when that lease is no longer held."""
        return await self._park(machine_id, token, error, parking.UNRUNNABLE)

    async def _park(self, machine_id: str, token: int, error: StateMachineError, kind: str) -> bool:
        params = {
            "id": machine_id,
            "token": token,
            "status": PARKED,
            "kind": kind,
            "data": Jsonb(reason(error)),
            **self._error_params(machine_id, parked_error(error)),
        }
        async with self._conn(f"parking {machine_id!r}") as conn:
            cur = await conn.execute(self._q["park"], params)
            return cur.rowcount == 1

    def _error_params(self, machine_id: str, text: str | None) -> dict[str, Any]:
        """The ``last_error``/``sealed_error`` parameters of a write of ``text``."""
        error = error_column(self.codec, machine_id, text)
        return {
            "last_error": error if isinstance(error, str) else None,
            "sealed_error": error if isinstance(error, bytes) else None,
        }

    async def unpark(self, machine_id: str) -> SerializableState | None:
        """Put a machine a claim parked back (see ``_parking``); ``INVALID_SNAPSHOT`` while
        its snapshot (or, never run, its start context) still cannot be read,
        ``NOT_PARKED`` if no claim parked it. Returns the snapshot (``None``: never run)."""
        doing = f"unparking {machine_id!r}"
        row = await self._fetchone("parked_row", {"id": machine_id}, doing)
        if row is None:
            raise unknown_machine(machine_id)
        status, blob, sealed, plain = row
        check_unpark(machine_id, status, blob is not None or sealed is not None or plain)
        snap = None
        if blob is None:  # never run: its start context was what could not be read
            if sealed is not None:
                unseal(self.codec, machine_id, sealed, "the start context")
            status, error = "active", None
        else:
            snap = _decode(self.codec, machine_id, blob)
            check_snapshot(snap)
            status, error = snap.status, error_text(snap.last_error)
        params = {
            **self._error_params(machine_id, error),
            "id": machine_id,
            "status": status,
            "snapshot": blob,
            "kind": UNPARKED,
            "data": Jsonb({"status": status}),
            "channel": CHANNEL,
        }
        if await self._fetchone("unpark", params, doing) is None:
            raise StateMachineError(
                f"machine {machine_id!r} changed while it was being unparked; look again",
                ErrorCode.CONFLICT,
            )
        return snap

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        if not leases:
            return set()
        ids = list(leases)
        params = {
            "worker": worker_id,
            "ids": ids,
            "tokens": [leases[i] for i in ids],
            "lease_ms": lease_ms,
        }
        rows = await self._fetchall("renew", params, "renewing leases")
        return set(ids) - {r[0] for r in rows}

    async def release(self, machine_id: str, token: int, *, wake_at: datetime | None) -> bool:
        params = {
            "id": machine_id,
            "token": token,
            "wake_at": None if wake_at is None else utc(wake_at),
            "channel": CHANNEL,
        }
        row = await self._fetchone("release", params, f"releasing {machine_id!r}")
        return row is not None

    async def next_event(self, machine_id: str) -> InboxEvent | None:
        row = await self._fetchone(
            "next_event", {"id": machine_id}, f"reading the inbox of {machine_id!r}"
        )
        if row is None:
            return None
        seq, event_id, type_, payload, correlation_id, at, sealed = row
        fields = {"type": type_, "payload": payload, "correlation_id": correlation_id}
        if sealed is not None:
            fields.update(unseal(self.codec, machine_id, sealed, f"event {event_id!r}"))
        return inbox_event(seq, event_id, fields, at.astimezone(UTC))

    async def cancel_requested(self, machine_id: str) -> bool:
        row = await self._fetchone("cancel_requested", {"id": machine_id}, "reading a cancel")
        return row is not None and bool(row[0])

    async def wait_for_work(self, max_wait_s: float) -> None:
        """Return at the next notification (an event sent, a machine started, released
        with work or a timer, a cancel request), at the earliest timer of an active
        machine, or after ``max_wait_s``, whichever comes first; at once when a
        notification came while nobody waited (say between a worker's claim and this
        wait), or the listener (re)connected since. Never raises for an unreachable
        server: the listener reconnects in the background."""
        if self._listener is None:
            self._listener = Listener(self.dsn)
        await self._listener.wait_for_work(max_wait_s, self._next_timer)

    async def _next_timer(self) -> float | None:
        """Seconds until the earliest timer of an active machine (``None``: none, or the
        server cannot say now)."""
        try:
            row = await self._fetchone("next_wake", None, "reading the next timer")
        except StateMachineError:
            return None
        return None if row is None or row[0] is None else float(row[0])
