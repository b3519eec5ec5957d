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

from ._cli import command, say
from ._cli_store import _dumps, _iso, _store_args, _with_store, _workflow
from ._errors import ErrorCode, StateMachineError
from .stores import MachineInfo, Store
from .stores._parking import UNREADABLE

__all__ = ["show_parked"]


async def show_parked(store: Store, info: MachineInfo, error: StateMachineError, js: bool) -> int:
    """``show`` of a machine whose snapshot cannot be read: why, and what to do."""
    entries = [e for e in await store.journal(info.machine_id) if e.kind == UNREADABLE]
    why = str(entries[-1].data.get("message")) if entries else error.message
    if js:
        out: dict[str, Any] = {
            "machine_id": info.machine_id,
            "workflow": info.workflow,
            "status": info.status,
            "updated_at": _iso(info.updated_at),
            "unreadable": error.message,
            "parked_because": why if entries else None,
            "snapshot": None,
        }
        print(_dumps(out))
        return 0
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
