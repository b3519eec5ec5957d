"""Fixtures of the store contract: every test runs on every store in ``STORE_KINDS``.

To put a new backend under the contract, append one ``StoreKind`` to the list: how to
make it (for a test's ``tmp_path``) and how to overwrite a stored snapshot behind the
store's back (for the tampering test). Stores declare nothing else; every contract
test must pass on every one of them.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import postgres_kind
import pytest

import deploysm
from deploysm import SerializableState, StateMachineConfig, Transition
from deploysm.stores import MemoryStore, Store
from deploysm.stores._sqlite import SQLiteStore
from deploysm.testing import VirtualClock

Tamper = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True)
class StoreKind:
    name: str
    make: Callable[[Path], Store]
    # Overwrite the stored snapshot bytes of a machine, as a corrupt disk or a hand
    # edit would.
    tamper: Callable[[Any, str, bytes], Awaitable[None]]


async def _tamper_memory(store: MemoryStore, machine_id: str, blob: bytes) -> None:
    store._rows[machine_id].blob = blob


async def _tamper_sqlite(store: SQLiteStore, machine_id: str, blob: bytes) -> None:
    with sqlite3.connect(store.path, timeout=5) as raw:  # commits on exit
        raw.execute("UPDATE machines SET snapshot = ? WHERE id = ?", (blob, machine_id))
    raw.close()


STORE_KINDS: list[StoreKind] = [
    StoreKind("memory", lambda tmp: MemoryStore(), _tamper_memory),
    StoreKind("sqlite", lambda tmp: SQLiteStore(tmp / "x.db"), _tamper_sqlite),
    StoreKind("postgres", postgres_kind.make, postgres_kind.tamper),
]


@pytest.fixture(params=STORE_KINDS, ids=[k.name for k in STORE_KINDS])
def store_kind(request: pytest.FixtureRequest) -> StoreKind:
    kind: StoreKind = request.param
    return kind


@dataclass(frozen=True)
class RuntimeKind:
    name: str
    make: Callable[[Path], Any]  # an unopened RuntimeStore


RUNTIME_KINDS: list[RuntimeKind] = [
    RuntimeKind("memory", lambda tmp: MemoryStore()),
    RuntimeKind("sqlite", lambda tmp: SQLiteStore(tmp / "rt.db")),
    RuntimeKind("postgres", postgres_kind.make),
]


@pytest.fixture(params=RUNTIME_KINDS, ids=[k.name for k in RUNTIME_KINDS])
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A runtime store of each kind (the ``RuntimeStore`` contract), opened."""
    kind: RuntimeKind = request.param
    store = kind.make(tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(store_kind: StoreKind, tmp_path: Path) -> AsyncIterator[Store]:
    s = store_kind.make(tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def tamper(store_kind: StoreKind, store: Store) -> Tamper:
    async def run(machine_id: str, blob: bytes) -> None:
        await store_kind.tamper(store, machine_id, blob)

    return run


def _config() -> StateMachineConfig[Any, Any, Any]:
    return StateMachineConfig(
        id="deployment-workflow",
        initial_state="idle",
        states=["idle", "validating", "deploying", "completed", "failed"],
        events=["START", "VALIDATED", "DEPLOYED", "FAIL"],
        transitions=[
            Transition(from_="idle", to="validating", event="START"),
            Transition(from_="validating", to="deploying", event="VALIDATED"),
            Transition(from_="deploying", to="completed", event="DEPLOYED"),
            Transition(from_=["validating", "deploying"], to="failed", event="FAIL"),
        ],
        clock=VirtualClock(),
        random=random.Random(1),
    )


MakeSnapshot = Callable[..., Awaitable[SerializableState]]


@pytest.fixture
def make_snapshot() -> MakeSnapshot:
    """``await make_snapshot(machine_id, version=0, status="active", steps=0)``: a real
    snapshot from the engine, after ``steps`` transitions of the seed's simple flow."""

    async def make(
        machine_id: str, *, version: int = 0, status: Any = "active", steps: int = 0
    ) -> SerializableState:
        sm = deploysm.create_state_machine(
            _config(), {"service": "api", "replicas": 3}, machine_id=machine_id
        )
        for event in ["START", "VALIDATED", "DEPLOYED"][:steps]:
            assert (await sm.dispatch(event)).success
        snap = await sm.serialize()
        return dataclasses.replace(snap, version=version, status=status)

    return make
