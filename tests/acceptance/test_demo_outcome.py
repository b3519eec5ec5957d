"""``deploysm demo`` as a user runs it, on a fresh SQLite file: how the deployment ends
(completed, or rolled back with ``--fail-health``), what it prints, what the store then
holds (``deploysm ls``/``show`` and the store itself), and the exit code; and that
every time it stores is a wall-clock time of the run, not the demo's fast clock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deploysm import SerializableState
from deploysm.stores import JournalEntry, MachineInfo, SQLiteStore

pytestmark = pytest.mark.slow

FAST = "300"  # ~320 simulated seconds in ~1 s
MACHINE = "demo-blue-green-1"


def deploysm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def demo(db: Path, *more: str) -> tuple[subprocess.CompletedProcess[str], datetime, datetime]:
    """Run the demo; its result and the wall-clock window it ran in."""
    before = datetime.now(UTC)
    r = deploysm("demo", "--speed", FAST, "--db", str(db), *more)
    after = datetime.now(UTC)
    assert "Traceback" not in r.stderr, r.stderr
    return r, before, after


async def _stored(db: Path) -> tuple[SerializableState, list[JournalEntry], list[MachineInfo]]:
    async with SQLiteStore(db) as store:
        snap = await store.load(MACHINE)
        assert snap is not None
        return snap, await store.journal(MACHINE), await store.list()


def stored(db: Path) -> tuple[SerializableState, list[JournalEntry], list[MachineInfo]]:
    return asyncio.run(_stored(db))


def listed(db: Path) -> dict[str, Any]:
    r = deploysm("ls", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["machine_id"] for row in rows] == [MACHINE]
    row: dict[str, Any] = rows[0]
    return row


def lines_with(out: str, *needles: str) -> list[int]:
    """The index of the first output line holding each needle, in the order asked."""
    lines = out.splitlines()
    found = []
    for needle in needles:
        at = [i for i, line in enumerate(lines) if needle in line]
        assert at, f"{needle!r} not in the output:\n{out}"
        found.append(at[0])
    return found


def test_fail_health_rolls_back_to_blue_tears_down_green_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    r, _, _ = demo(db, "--fail-health")

    assert r.returncode == 0, r.stdout + r.stderr  # the rollback is the expected end
    out = r.stdout
    order = lines_with(
        out,
        "health check 3/5 FAILED",
        "state    rolling_back ",
        "Routing all traffic back to blue",
        "Tearing down green checkout:v1.5.0",
        "state    rolled_back ",
    )
    assert order == sorted(order)
    entered = out.splitlines()[order[-1]]
    assert "(from rolling_back on ROLLBACK)" in entered
    assert "traffic to green: 0%" in entered
    assert "still in" not in out
    history = out[out.index("\nHistory\n") :]
    assert "\n  rolled_back " in history
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("Summary: rolled back after "), summary
    assert "Health check failed" in summary
    assert "all traffic on blue (checkout:v1.4.2)" in summary
    assert "green (checkout:v1.5.0) torn down" in summary

    snap, journal, _ = stored(db)
    assert snap.current_state.name == "rolled_back"
    assert snap.status == "completed"  # a final state reached by events
    assert snap.in_flight is None
    assert snap.context["traffic_percentage"] == 0
    committed = [e.data["to"] for e in journal if e.kind == "committed"]
    assert committed[-2:] == ["rolling_back", "rolled_back"]
    row = listed(db)
    assert (row["state"], row["status"]) == ("rolled_back", "completed")
    shown = deploysm("show", MACHINE, "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    assert "rolling_back -> rolled_back" in shown.stdout


def test_happy_path_completes_on_green_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    r, _, _ = demo(db)

    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("Summary: completed after "), summary
    assert "all traffic on green (checkout:v1.5.0)" in summary
    assert "Tearing down green" not in r.stdout
    snap, _, _ = stored(db)
    assert (snap.current_state.name, snap.status) == ("completed", "completed")
    assert snap.context["traffic_percentage"] == 100
    row = listed(db)
    assert (row["state"], row["status"]) == ("completed", "completed")


def test_demo_after_a_rolled_back_one_starts_a_new_one(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    assert demo(db, "--fail-health")[0].returncode == 0
    r, _, _ = demo(db)
    assert r.returncode == 0, r.stderr
    assert "the last demo finished (completed, in rolled_back); starting a new one" in r.stdout
    assert f"kept in {db} as demo-blue-green-2" in r.stdout


@pytest.mark.parametrize("more", [(), ("--fail-health",)], ids=["completed", "rolled-back"])
def test_every_stored_time_is_a_wall_clock_time_of_the_run(
    tmp_path: Path, more: tuple[str, ...]
) -> None:
    db = tmp_path / "demo.db"
    r, before, after = demo(db, *more)
    assert r.returncode == 0, r.stdout + r.stderr
    snap, journal, infos = stored(db)
    slack = timedelta(milliseconds=5)  # the store keeps microseconds; clocks agree to that
    times: dict[str, datetime] = {"updated_at": infos[0].updated_at}
    times.update({f"history {s.name}": s.timestamp for s in snap.history})
    times[f"state {snap.current_state.name}"] = snap.current_state.timestamp
    for v in snap.metrics.states:
        times[f"entered {v.state}"] = v.entered_at
        if v.exited_at is not None:
            times[f"exited {v.state}"] = v.exited_at
    times.update({f"journal {e.seq} {e.kind}": e.at for e in journal})
    wrong = {k: t for k, t in times.items() if not before - slack <= t <= after + slack}
    assert not wrong, f"outside {before} .. {after}: {wrong}"
    assert len(journal) > 10
