"""``deploysm unpark ID``, and what ``show`` says about a parked machine.

A worker's claim parks a machine whose stored snapshot it cannot read (garbage
bytes, a key id missing from the keyring): its row's status becomes
``needs_attention``, the reason goes to its journal, the bytes stay as they are. Once
the cause is fixed (the key is back), ``unpark`` checks that the snapshot reads and
puts the machine back; workers then run it.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from ..stores import MachineInfo, Store
from ..stores._parking import UNREADABLE, UNRUNNABLE
from ._base import command, say
from ._read import _describe, _dumps, _iso, _store_args, _with_store, _workflow

__all__ = ["show_parked", "show_unrunnable"]


async def show_parked(store: Store, info: MachineInfo, error: StateMachineError, js: bool) -> int:
    """``show`` of a machine whose snapshot cannot be read: why, and what to do."""
    why = await _why(store, info, UNREADABLE)
    if js:
        return _print_json(info, unreadable=error.message, parked_because=why, snapshot=None)
    why = why or error.message
    say(
        f"machine      {info.machine_id}",
        f"workflow     {_workflow(info)}",
        f"status       {info.status} (parked: its snapshot cannot be read)",
        f"version      {info.version}",
        f"why          {why}",
        "to fix       make the snapshot readable (e.g. supply its key with --keys-env), "
        f"then: deploysm unpark {info.machine_id}",
    )
    return 0


async def show_unrunnable(
    store: Store, info: MachineInfo, snap: SerializableState | None, js: bool
) -> int:
    """``show`` of a machine a worker parked because it could not run it."""
    why = await _why(store, info, UNRUNNABLE) or "unknown"
    if js:
        data = snap.to_dict() if snap is not None else None
        return _print_json(info, parked_because=why, snapshot=data)
    lines = [f"machine      {info.machine_id}", f"workflow     {_workflow(info)}"]
    if snap is not None:
        lines = [line for line in _describe(snap, info) if not line.startswith("status ")]
    lines[2:2] = [
        f"status       {info.status} (parked: the worker cannot run it)",
        f"why          {why}",
        f"to fix       fix the workflow or the data, then: deploysm unpark {info.machine_id}",
    ]
    say(*lines)
    return 0


async def _why(store: Store, info: MachineInfo, kind: str) -> str | None:
    """The message of the machine's last journal record of ``kind`` (why it was parked)."""
    entries = [e for e in await store.journal(info.machine_id) if e.kind == kind]
    return str(entries[-1].data.get("message")) if entries else None


def _print_json(info: MachineInfo, **fields: Any) -> int:
    out: dict[str, Any] = {
        "machine_id": info.machine_id,
        "workflow": info.workflow,
        "status": info.status,
        "updated_at": _iso(info.updated_at),
        **fields,
    }
    print(_dumps(out))
    return 0


def _configure_unpark(p: argparse.ArgumentParser) -> None:
    _store_args(p, json_=False)


@command(
    "unpark",
    "put back a machine a worker parked because its snapshot could not be read",
    _configure_unpark,
)
def _unpark(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        unpark = getattr(store, "unpark", None)
        if unpark is None:
            raise StateMachineError(
                f"{type(store).__name__} cannot unpark machines", ErrorCode.INVALID_ACTION
            )
        snap = await unpark(args.machine_id)
        where = (
            "never run yet"
            if snap is None
            else f"{snap.status} in {snap.current_state.name} (version {snap.version})"
        )
        say(f"unparked {args.machine_id}: {where}; a worker runs it again")
        return 0

    return _with_store(args, body)
