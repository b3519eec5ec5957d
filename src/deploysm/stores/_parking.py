"""Parking: what every runtime store does with a machine whose snapshot it cannot read.

A claim that meets a stored snapshot it cannot decode (garbage bytes, a key id that
is not in the keyring, a tampered row) does not fail: it *parks* that machine (its
row's status becomes ``needs_attention``, the reason goes to its journal as an
``unreadable`` record, the snapshot bytes stay as they are), logs it, and claims the
others. No claim takes a parked machine. Once its snapshot reads again (the missing
key is back), ``store.unpark(machine_id)`` (``deploysm unpark ID``) restores the
row's status from the snapshot and records ``unparked``; a worker then runs it.

A worker that holds a machine's lease but cannot run it (its stored context or
snapshot does not fit the workflow's definition, the workflow's factory raises)
parks it the same way with ``store.park(machine_id, token, error)``: status
``needs_attention``, the lease given back, an ``unrunnable`` journal record with the
error. Unpark it once the code or the data is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState

__all__ = [
    "PARKED",
    "UNPARKED",
    "UNREADABLE",
    "UNRUNNABLE",
    "check_snapshot",
    "check_unpark",
    "log_parked",
    "parked_error",
    "reason",
]

logger = logging.getLogger("deploysm.stores")

PARKED = "needs_attention"  # the row status of a parked machine
UNREADABLE = "unreadable"  # journal kind: why a claim parked the machine
UNPARKED = "unparked"  # journal kind: the operator put it back
UNRUNNABLE = "unrunnable"  # journal kind: a worker could not run it


def reason(error: StateMachineError) -> dict[str, Any]:
    """The journal data of an ``unreadable`` record."""
    return {"code": error.code, "message": error.message}


def parked_error(error: StateMachineError) -> str:
    """What ``list()`` shows as the last error of a machine parked for ``error``."""
    return f"{error.code}: {error.message}"


def log_parked(machine_id: str, error: StateMachineError) -> None:
    logger.error(
        "machine %s parked (needs_attention): its snapshot cannot be read: %s; fix it "
        "(e.g. supply the missing key), then `deploysm unpark %s`",
        machine_id,
        error.message,
        machine_id,
    )


def check_unpark(machine_id: str, row_status: str, has_snapshot: bool) -> None:
    """Refuse (``NOT_PARKED``) to unpark a row a claim did not park."""
    if row_status != PARKED or not has_snapshot:
        raise StateMachineError(
            f"machine {machine_id!r} is {row_status}, not parked: nothing to unpark",
            ErrorCode.NOT_PARKED,
        )


def check_snapshot(snap: SerializableState) -> None:
    """Refuse (``NOT_PARKED``) a machine that its own snapshot parks: ``resolve`` it."""
    if snap.status == PARKED:
        raise StateMachineError(
            f"machine {snap.machine_id!r} needs an operator's decision on its transition, "
            "not an unpark: use resolve",
            ErrorCode.NOT_PARKED,
        )
