"""Two real processes on one store and the same machine ids, without a worker.

Process A dispatches SHIP on every machine: a non-idempotent effect that takes 2 s,
longer than the lease (1.2 s: A's heartbeat must keep it). Once every effect runs,
process B calls ``resume()`` on every machine, again and again, until nothing is in
flight. B must be refused (``LEASE_HELD``) while A works, and must never roll back or
re-run A's attempt: 0 double effects, 0 undone commits, every machine shipped once,
A's every dispatch a success, no traceback anywhere. Then the same with A killed
(SIGKILL) in the middle of its effects: B takes the machines over at once (A's
process is gone) and finishes them, each effect in force exactly once.

On SQLite (one file) and on PostgreSQL (a fresh schema). The ledger is
``crash_worker``'s durable SQLite ledger, written by the effect and its rollback.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crash_worker as cw
import pytest
from pg_procs import pk

from deploysm.stores import PostgresStore, SQLiteStore

HERE = Path(__file__).resolve().parent
N = 8


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db"), None
        return
    dsn = pk.pg_dsn()
    schema = pk.fresh_schema()
    yield dsn, schema
    asyncio.run(pk.drop_schema(dsn, schema))


def spawn(role: str, target: tuple[str, str | None], ledger: Path, tmp: Path) -> Any:
    store, schema = target
    args = [sys.executable, str(HERE / "two_owners.py"), role, store, str(ledger), str(N)]
    err = open(tmp / f"{role}.err", "w+")  # noqa: SIM115 (read after the process ends)
    proc = subprocess.Popen(
        [*args, *([schema] if schema else [])], stdout=subprocess.PIPE, stderr=err, text=True
    )
    return proc, err


def finish(proc: Any, err: Any, timeout: float = 60) -> list[list[str]]:
    out, _ = proc.communicate(timeout=timeout)
    err.seek(0)
    text = err.read()
    err.close()
    assert text == ""  # no traceback, no private exception
    return [line.split() for line in out.splitlines()]


def start_a(target: tuple[str, str | None], tmp: Path) -> tuple[Path, Any, Any]:
    """A fresh ledger, and process A once every one of its effects runs."""
    ledger = tmp / "ledger.db"
    cw.init_ledger(ledger)
    a, a_err = spawn("a", target, ledger, tmp)
    line = a.stdout.readline()
    assert line.strip() == "started", line
    return ledger, a, a_err


async def stored(target: tuple[str, str | None]) -> dict[str, Any]:
    dsn, schema = target
    store: Any = PostgresStore(dsn, schema=schema) if schema is not None else SQLiteStore(Path(dsn))
    async with store:
        snaps = {f"m{i}": await store.load(f"m{i}") for i in range(N)}
        journal = {mid: [e.kind for e in await store.journal(mid)] for mid in snaps}
    return {"snaps": snaps, "journal": journal}


def in_force(ledger: Path) -> Counter[str]:
    """Per machine: attempts started (each may have taken effect) minus rollbacks."""
    net: Counter[str] = Counter()
    for _seq, kind, mid, *_ in cw.ledger_rows(ledger):
        net[mid] += {"start": 1, "undo": -1}.get(kind, 0)
    return net


def test_resume_never_takes_a_live_attempt_away(
    target: tuple[str, str | None], tmp_path: Path
) -> None:
    ledger, a, a_err = start_a(target, tmp_path)
    b, b_err = spawn("b", target, ledger, tmp_path)
    a_lines, b_lines = finish(a, a_err), finish(b, b_err)

    assert sorted(a_lines) == sorted(["a", f"m{i}", "ok"] for i in range(N))
    assert [line for line in b_lines if line[2] == "took"] == []
    refused = [line for line in b_lines if line[2] == "refused"]
    assert {line[3] for line in refused} == {"LEASE_HELD"}
    assert len(refused) == N  # B tried every machine while A's effect ran
    assert sorted(line[1] for line in b_lines if line[2] == "done") == sorted(
        f"m{i}" for i in range(N)
    )
    kinds = Counter(row[1] for row in cw.ledger_rows(ledger))
    assert kinds == {"start": N, "end": N}  # 0 double effects, 0 rollbacks
    found = asyncio.run(stored(target))
    for mid, snap in found["snaps"].items():
        assert snap is not None and snap.current_state.name == "shipped", mid
        assert snap.status == "completed" and snap.in_flight is None
        assert found["journal"][mid] == ["intent", "committed", "completed"]


def test_a_killed_owner_is_taken_over_and_every_effect_is_in_force_once(
    target: tuple[str, str | None], tmp_path: Path
) -> None:
    ledger, a, a_err = start_a(target, tmp_path)
    a.send_signal(signal.SIGKILL)
    finish(a, a_err)  # reaped: its pid no longer exists
    b, b_err = spawn("b", target, ledger, tmp_path)
    b_lines = finish(b, b_err)

    assert sorted(line[1] for line in b_lines if line[2] == "took") == sorted(
        f"m{i}" for i in range(N)
    )
    assert in_force(ledger) == {f"m{i}": 1 for i in range(N)}
    kinds = Counter(row[1] for row in cw.ledger_rows(ledger))
    assert kinds == {"start": 2 * N, "undo": N, "end": N}  # A's cut attempt, undone; B's
    found = asyncio.run(stored(target))
    for mid, snap in found["snaps"].items():
        assert snap is not None and snap.status == "completed" and snap.in_flight is None, mid
        assert "rollback" in found["journal"][mid] and "resumed" in found["journal"][mid]
