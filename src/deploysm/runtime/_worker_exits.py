"""How a worker lets go of a machine other than by finishing its run, and what it logs
then: parking one it cannot run, handing one back when it stops during a retry delay,
taking one over from a worker whose lease expired (and, at start, the machines whose
lease it waits for)."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ..engine._engine import StateMachine
from ..stores._runtime import Claim, RuntimeStore
from ._leased import LeasedStore

__all__ = [
    "about",
    "cannot_run",
    "hand_back",
    "log_needs_attention",
    "log_takeover",
    "log_waits",
    "park",
]

logger = logging.getLogger("deploysm.worker")

_STORE_CODES = frozenset(
    (
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.STORE_BUSY,
        ErrorCode.PERSISTENCE_ERROR,
        ErrorCode.LEASE_LOST,
        ErrorCode.KEYS_REQUIRED,
        ErrorCode.SCHEMA_TOO_NEW,
    )
)


def about(claim: Claim, **fields: Any) -> dict[str, Any]:
    """The ``extra`` of a log record about one machine."""
    return {"machine_id": claim.machine_id, "fields": {"workflow": claim.workflow, **fields}}


def cannot_run(error: Exception) -> bool:
    """Whether ``error`` says this machine cannot be run (its data or its workflow),
    rather than that the store failed (retried, or the worker stops)."""
    return not isinstance(error, StateMachineError) or error.code not in _STORE_CODES


async def park(
    store: RuntimeStore, claim: Claim, view: LeasedStore, sm: Any, error: Exception
) -> None:
    """A machine the worker holds but cannot run: parked with its error, its lease
    given back, so that it is neither retried forever nor held."""
    if isinstance(sm, StateMachine):
        sm.stop_state_timer()
    view.released = True
    if not isinstance(error, StateMachineError):
        error = StateMachineError(f"{type(error).__name__}: {error}", ErrorCode.CANNOT_RUN)
    parks = getattr(store, "park", None)
    if parks is None or not await parks(claim.machine_id, view.token, error):
        logger.error("%s", error.message, extra=about(claim, code=error.code))
        return
    logger.error(
        "parked (needs_attention): the worker cannot run it: %s; fix the workflow or "
        "the data, then `deploysm unpark %s`",
        error.message,
        claim.machine_id,
        extra=about(claim, code=error.code),
    )


async def hand_back(
    store: RuntimeStore, claim: Claim, view: LeasedStore, sm: StateMachine[Any, Any, Any]
) -> None:
    """The worker stops while the machine waits out a durable retry delay: its lease
    goes back now, the machine due again at the recorded retry time."""
    flight = sm.in_flight
    due = flight.next_retry_at if flight is not None else None
    sm.stop_state_timer()
    view.released = True
    if await store.release(claim.machine_id, view.token, wake_at=due):
        logger.info(
            "handed back while waiting to retry; due again at %s",
            due.isoformat(timespec="milliseconds") if due is not None else "once claimed",
            extra=about(claim, attempt=flight.attempt if flight is not None else None),
        )


def log_needs_attention(claim: Claim, sm: StateMachine[Any, Any, Any]) -> None:
    error = sm.last_error or {}
    logger.error(
        "parked (needs_attention): %s; decide with `deploysm resolve %s`",
        error.get("message", "an operator must decide"),
        claim.machine_id,
        extra=about(claim, code=error.get("code")),
    )


def log_takeover(claim: Claim) -> None:
    logger.warning(
        "taken over from worker %s, whose lease expired (it stopped or stalled)",
        claim.taken_from,
        extra=about(claim),
    )


WAITS_SHOWN = 10  # machines named one line each; the rest in one count


async def log_waits(store: RuntimeStore, worker_id: str, workflows: Collection[str]) -> None:
    """One line per machine with work of ``workflows`` whose lease another worker holds
    (the first ``WAITS_SHOWN``): how long until it expires, and whose it is. One store
    query; a store that cannot say (or cannot now) says nothing, the claims go on."""
    find = getattr(store, "leased_elsewhere", None)
    if find is None:
        return
    try:
        held: list[tuple[str, str, datetime]] = await find(worker_id, workflows)
    except StateMachineError as e:
        logger.debug("cannot list the leases of other workers: %s", e)
        return
    now = datetime.now(UTC)
    for mid, owner, until in held[:WAITS_SHOWN]:
        logger.info(
            "waiting %d s for the lease of worker %s (a stopped worker's lease expires by itself)",
            max(0, math.ceil((until - now).total_seconds())),
            owner,
            extra={
                "machine_id": mid,
                "fields": {"owner": owner, "lease_expires_at": until.isoformat()},
            },
        )
    if len(held) > WAITS_SHOWN:
        logger.info(
            "and %d more machine(s) wait for the lease of another worker",
            len(held) - WAITS_SHOWN,
        )
