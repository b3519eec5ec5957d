"""``deploysm prune --older-than AGE``: retention of journals and delivered events."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import deploysm
from deploysm.stores import JournalRecord, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
OLD = datetime(2024, 5, 1, tzinfo=UTC)


def cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPLOYSM_DB": db, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def _config() -> deploysm.StateMachineConfig[str, str, dict[str, int]]:
    return deploysm.StateMachineConfig(
        id="wf",
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[deploysm.Transition("a", "b", "GO")],
    )


async def _fill(path: Path) -> None:
    async with SQLiteStore(path) as store:
        for mid, status in (("done", "completed"), ("live", "active")):
            sm = deploysm.create_state_machine(_config(), {"n": 1}, machine_id=mid)
            snap = await sm.serialize()
            snap = type(snap).from_dict({**snap.to_dict(), "status": status, "version": 1})
            records = [JournalRecord(k, OLD, {"k": k}) for k in ("intent", "committed")]
            await store.save(snap, expected_version=None, journal=records, workflow="wf")
        for n in range(3):
            await store.send("live", "GO", event_id=f"e{n}")
        (claim,) = await store.claim("w", limit=1, lease_ms=60_000)
        first = await store.next_event("live")
        assert first is not None
        snap2 = type(snap).from_dict({**snap.to_dict(), "version": 2})
        await store.save(snap2, expected_version=1, token=claim.token, consumed=[first.seq])
    with sqlite3.connect(path) as raw:  # delivered long ago
        raw.execute("UPDATE inbox SET delivered_at = ? WHERE delivered_at IS NOT NULL", (str(OLD),))
    raw.close()


async def _left(path: Path) -> tuple[list[str], list[str], str | None]:
    async with SQLiteStore(path) as store:
        done = [e.kind for e in await store.journal("done")]
        live = [e.kind for e in await store.journal("live")]
        ev = await store.next_event("live")
        return done, live, None if ev is None else ev.event_id


def test_prune_removes_old_journals_of_finished_machines_and_old_delivered_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    asyncio.run(_fill(path))
    db = f"sqlite:///{path}"
    done = cli("prune", "--older-than", "30d", db=db)
    assert done.returncode == 0, done.stderr
    assert "2 journal entries" in done.stdout and "1 delivered event" in done.stdout
    assert "older than 30 days" in done.stdout
    assert asyncio.run(_left(path)) == ([], ["intent", "committed"], "e1")
    again = cli("prune", "--older-than", "12h", "--json", db=db)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["journal"] == 0 and json.loads(again.stdout)["inbox"] == 0


@pytest.mark.parametrize("args", [(), ("--older-than", "30"), ("--older-than", "0d")])
def test_prune_needs_a_positive_age(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = tmp_path / "p.db"
    asyncio.run(_fill(path))
    done = cli("prune", *args, db=f"sqlite:///{path}")
    assert done.returncode == 2 and "--older-than" in done.stderr
    assert "Traceback" not in done.stderr
    assert asyncio.run(_left(path))[0] == ["intent", "committed"]
