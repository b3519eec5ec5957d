"""How a worker lets go of a machine other than by finishing its run, and what it logs
then: parking one it cannot run, handing one back when it stops during a retry delay,
taking one over from a worker whose lease expired."""

from __future__ import annotations

import logging
from typing import Any

from ._engine import StateMachine
from ._errors import ErrorCode, StateMachineError
from ._leased import LeasedStore
from .stores._runtime import Claim, RuntimeStore

__all__ = ["about", "cannot_run", "hand_back", "log_needs_attention", "log_takeover", "park"]

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
    flight = sm._in_flight
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
    error = sm._last_error or {}
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
