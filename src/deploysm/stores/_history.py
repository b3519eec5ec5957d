"""A machine's full history, read from its store.

A machine keeps only its last ``history_limit`` states (the snapshot's ``history``);
every state it left is also in its journal: each ``committed`` record carries it as
``exited``, and a ``history`` record holds the states a machine dropped when it took
a snapshot holding more than its limit (one written before the limit existed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ..core._types import State
from ..durable._load import Reader, state_in
from ._base import Store

__all__ = ["full_history"]


async def full_history(store: Store, machine_id: str) -> list[State[Any]]:
    """Every state ``machine_id`` left, oldest first: what ``get_history()`` would
    return with no ``history_limit``. Journal entries pruned by ``prune`` are gone
    (only a finished machine's are pruned); the snapshot's recent ones always stay.
    ``UNKNOWN_MACHINE`` if the store has no such machine."""
    snap = await store.load(machine_id)
    if snap is None:
        raise StateMachineError(
            f"machine {machine_id!r} is not in this store", ErrorCode.UNKNOWN_MACHINE
        )
    by_version: dict[int, State[Any]] = {}
    for e in await store.journal(machine_id):
        data = e.data
        if e.kind == "committed" and isinstance(data.get("exited"), Mapping):
            states: Any = [data["exited"]]
        elif e.kind == "history" and isinstance(data.get("states"), list):
            states = data["states"]
        else:
            continue
        for i, s in enumerate(states):
            state = state_in(Reader(s, f"journal entry {e.seq} state {i}"))
            by_version[state.version] = state
    for state in snap.history:
        by_version[state.version] = state
    return [by_version[v] for v in sorted(by_version)]
