"""What the worker needs from a store: durable starts, inboxes, leases with fencing.

A machine is *started* (a row with its workflow and start context, no snapshot
yet), receives events in its *inbox* (in order, de-duplicated by event id), and
is run by whichever worker *claims* it: a lease with an expiry and a fencing
token that grows with every claim. A save carrying an old token is refused with
``LEASE_LOST``, so a worker that lost its lease cannot write anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..core._errors import ErrorCode, StateMachineError
from ..core._types import Event
from ..durable._codec import jsonable
from ..durable._snapshot import SerializableState
from ._base import Store

__all__ = [
    "Claim",
    "InboxEvent",
    "Lease",
    "LeaseHeld",
    "RuntimeStore",
    "context_object",
    "event_fields",
    "already_finished",
    "holds_lease",
    "lease_lost",
    "unknown_machine",
]

LEASE_LOST = ErrorCode.LEASE_LOST
UNKNOWN_MACHINE = ErrorCode.UNKNOWN_MACHINE


@dataclass(frozen=True, slots=True)
class Claim:
    """A machine a worker now holds: run it, then ``release`` it with the same token."""

    machine_id: str
    workflow: str
    token: int
    snapshot: SerializableState | None  # None: started, never run yet
    context: Any  # the start context (JSON data), when snapshot is None
    cancel_requested: bool = False
    taken_from: str | None = None  # the worker whose lease had expired (None: it was free)


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """An undelivered event: ``seq`` orders a machine's inbox."""

    seq: int
    event_id: str
    event: Event[Any]


@dataclass(frozen=True, slots=True)
class Lease:
    """A machine run without a worker leases itself through its saves (``save(...,
    lease=Lease(...))``): a save of a snapshot with a transition in flight (status
    ``active``) holds the lease for ``owner`` until ``ms`` from now, and bumps the
    fencing token when it takes the lease (no ``token`` given); any other save frees
    it. A save without a token is refused with ``LEASE_HELD`` while another owner's
    lease is live, unless that owner is ``evict`` (known to be dead)."""

    owner: str
    ms: int
    evict: str | None = None


class LeaseHeld(StateMachineError):
    """``LEASE_HELD``: another owner's lease on the machine is live; ``holder`` is that
    owner, ``until`` when its lease ends (unless renewed)."""

    code = ErrorCode.LEASE_HELD

    def __init__(self, machine_id: str, holder: str | None, until: datetime | None) -> None:
        when = f" until {until.isoformat()}" if until is not None else ""
        super().__init__(
            f"machine {machine_id!r} is being run by {holder!r} (its lease is live{when}); "
            "nothing was changed: try again once that lease has expired"
        )
        self.holder = holder
        self.until = until


def holds_lease(snapshot: SerializableState) -> bool:
    """Whether saving ``snapshot`` with a ``Lease`` holds the lease (else frees it)."""
    return snapshot.in_flight is not None and snapshot.status == "active"


@runtime_checkable
class RuntimeStore(Store, Protocol):
    """A ``Store`` a ``Worker`` can run machines out of."""

    async def start(self, workflow: str, machine_id: str, context: Any) -> None:
        """Create a machine to be run by a worker; an existing id is ``CONFLICT``."""
        ...

    async def send(self, machine_id: str, event: Any, event_id: str | None = None) -> bool:
        """Append ``event`` (an Event, a name or a mapping) to the machine's inbox.

        ``False`` when ``event_id`` was sent before (nothing is added). Unknown
        machine: ``UNKNOWN_MACHINE``; a finished one: ``NOT_ACTIVE``."""
        ...

    async def request_cancel(self, machine_id: str) -> None:
        """Ask whichever worker runs (or next claims) the machine to cancel it. Unknown
        machine: ``UNKNOWN_MACHINE``; one already completed, failed or cancelled:
        ``NOT_ACTIVE``, nothing written."""
        ...

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        workflows: Collection[str] | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` active machines that have work (never run, an
        unfinished transition, an undelivered event, a due timer, a cancel request)
        and whose lease is free or expired; each claim bumps the fencing token and
        names the worker whose expired lease it took (``Claim.taken_from``).
        ``workflows`` limits the claim to machines of those workflows."""
        ...

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        """Extend the leases held (machine id -> token); return the ids that were lost."""
        ...

    async def release(self, machine_id: str, token: int, *, wake_at: datetime | None) -> bool:
        """Give the lease back; the machine is claimable again from ``wake_at`` on
        (``None``: only when an event arrives). ``False`` if the lease was lost."""
        ...

    async def next_event(self, machine_id: str) -> InboxEvent | None:
        """The oldest undelivered event of the machine."""
        ...

    async def cancel_requested(self, machine_id: str) -> bool:
        """Whether ``request_cancel`` was called for the machine (checked between events)."""
        ...

    async def wait_for_work(self, max_wait_s: float) -> None:
        """Return when an event may have arrived (a notification) or after ``max_wait_s``."""
        ...

    # save(...) of a runtime store also takes ``token`` (refuse with LEASE_LOST unless
    # it is the machine's current fencing token; without a token, refuse while another
    # worker's lease is live), ``consumed`` (inbox seqs marked delivered in the same
    # transaction) and ``lease`` (a ``Lease``: see there; then it returns the machine's
    # fencing token after the write).
    #
    # Optional (a worker calls it once at start when the store has it):
    # leased_elsewhere(worker_id, workflows=None) -> [(machine id, owner, lease expiry)],
    # the machines with work a claim of ``workflows`` would take but for another owner's
    # live lease, by id. Not part of the protocol, so stores written before it still are
    # RuntimeStores.


def event_fields(event: Any, event_id: str | None) -> tuple[str, dict[str, Any]]:
    """An event id and the event's JSON fields (type, payload, correlation_id)."""
    from ..durable._codec import jsonable

    if isinstance(event, str):
        fields: dict[str, Any] = {"type": event}
    elif isinstance(event, Event):
        fields = {"type": event.type, "payload": event.payload}
        if event.correlation_id is not None:
            fields["correlation_id"] = event.correlation_id
    elif isinstance(event, Mapping):
        fields = {k: event[k] for k in ("type", "payload", "correlation_id") if k in event}
    else:
        raise StateMachineError(
            f"cannot send a {type(event).__name__}: pass an Event, a name or a mapping",
            "INVALID_EVENT",
        )
    if not isinstance(fields.get("type"), str) or not fields["type"]:
        raise StateMachineError("event type must be a non-empty string", "INVALID_EVENT")
    try:
        fields = jsonable(fields)
    except TypeError as e:
        raise StateMachineError(f"event payload cannot be stored: {e}", "INVALID_EVENT") from e
    if event_id is None:
        event_id = uuid.uuid4().hex
    elif not isinstance(event_id, str) or not event_id:
        raise StateMachineError("event_id must be a non-empty string", "INVALID_EVENT")
    return event_id, fields


def inbox_event(seq: int, event_id: str, fields: Mapping[str, Any], at: datetime) -> InboxEvent:
    return InboxEvent(
        seq,
        event_id,
        Event(fields["type"], fields.get("payload"), at, fields.get("correlation_id")),
    )


def lease_lost(machine_id: str, token: int | None) -> StateMachineError:
    return StateMachineError(
        f"machine {machine_id!r}: this writer's lease (token {token}) is no longer valid; "
        "another owner took the machine over, nothing was written",
        LEASE_LOST,
    )


def already_finished(machine_id: str, status: str) -> StateMachineError:
    """A cancel request for a machine that has ended."""
    return StateMachineError(
        f"machine {machine_id!r} is already {status}: there is nothing to cancel",
        ErrorCode.NOT_ACTIVE,
    )


def unknown_machine(machine_id: str) -> StateMachineError:
    return StateMachineError(
        f"machine {machine_id!r} does not exist: start it first", UNKNOWN_MACHINE
    )


def context_object(context: Any) -> dict[str, Any]:
    """The start context of ``RuntimeStore.start`` as JSON data: it must be a JSON
    object (a dict with string keys, a dataclass, a pydantic model), since a worker
    builds the machine's context from it; anything else is ``INVALID_CONTEXT``."""
    try:
        data = jsonable(context)
    except TypeError as e:
        raise StateMachineError(f"context cannot be stored: {e}", ErrorCode.INVALID_CONTEXT) from e
    if not isinstance(data, dict):
        raise StateMachineError(
            f"a started machine's context must be a JSON object, not {type(context).__name__}"
            " (a worker runs it with a dict context)",
            ErrorCode.INVALID_CONTEXT,
        )
    return data
