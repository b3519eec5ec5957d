"""``deploysm demo`` resumes: SIGKILL or Ctrl-C it during the traffic switch, run it
again, and the deployment goes on from where it stopped to ``completed``, each state
entered once and in order."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from deploysm import SerializableState
from deploysm.stores import SQLiteStore

pytestmark = pytest.mark.slow

SPEED = "100"  # ~320 simulated seconds in ~3.2 s; a traffic step is 10 ms
MACHINE = "demo-blue-green-1"
PAUSE_S = 1.0  # 100 simulated seconds at SPEED, were it counted
STATES = [
    "idle",
    "preparing_green",
    "deploying_green",
    "testing_green",
    "switching_traffic",
    "monitoring",
    "completed",
]


def command(db: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "deploysm", "demo", "--db", str(db), "--speed", SPEED, *more]


def interrupt_during_the_switch(db: Path, sig: signal.Signals) -> tuple[int, str, str]:
    """Start the demo, send ``sig`` once the traffic switch is under way; its exit code
    and output."""
    with subprocess.Popen(
        command(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stream: Any) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 30
        try:
            while True:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                assert line is not None, "".join(seen)
                seen.append(line)
                if "Routing 10% traffic to green" in line:
                    proc.send_signal(sig)
                    break
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=10)
        while (line := lines.get_nowait() if not lines.empty() else None) is not None:
            seen.append(line)
        return code, "".join(seen), proc.stderr.read()


def rerun(db: Path, *more: str) -> subprocess.CompletedProcess[str]:
    time.sleep(PAUSE_S)  # stopped for a while before running it again
    return subprocess.run(
        command(db, *more), capture_output=True, text=True, timeout=60, check=False
    )


async def stored(db: Path) -> tuple[SerializableState, list[Any]]:
    async with SQLiteStore(db) as store:
        snap = await store.load(MACHINE)
        assert snap is not None
        return snap, await store.journal(MACHINE)


def assert_completed_once_each(out: str, db: Path) -> None:
    history = out[out.index("\nHistory\n") :]
    rows = [m.group(1) for m in re.finditer(r"\n  ([a-z_]+) +\d\d:\d\d\.\d", history)]
    assert rows == STATES
    summary = out.strip().splitlines()[-1]
    took = re.fullmatch(r"Summary: completed after (\d+)m([0-9.]+)s of simulated time .*", summary)
    assert took, summary
    # ~5.5 simulated minutes: the PAUSE_S the demo was stopped is not counted (x100)
    assert int(took.group(1)) * 60 + float(took.group(2)) < 400
    snap, journal = asyncio.run(stored(db))
    now = datetime.now(UTC)  # the store keeps wall-clock times, none in the future
    assert all(e.at <= now for e in journal)
    assert all(s.timestamp <= now for s in [*snap.history, snap.current_state])
    assert snap.status == "completed"
    assert [s.name for s in snap.history] == STATES[:-1]
    committed = [e.data["to"] for e in journal if e.kind == "committed"]
    assert committed == STATES[1:]


def test_killed_during_the_traffic_switch_resumes_with_a_rollback(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    code, out, _ = interrupt_during_the_switch(db, signal.SIGKILL)
    assert code == -signal.SIGKILL
    snap, _ = asyncio.run(stored(db))
    flight = snap.in_flight
    assert flight is not None and flight.to_state == "switching_traffic", out
    assert (snap.status, snap.current_state.name) == ("active", "testing_green")

    r = rerun(db)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = r.stdout
    assert f"resuming deployment {MACHINE} from state testing_green (version {snap.version}" in out
    n = flight.attempt
    if flight.phase == "running":
        assert f"attempt {n} of testing_green -> switching_traffic was running" in out
        assert f"resumed: rolling back the interrupted attempt {n}, then retrying" in out
        assert out.index("resumed: rolling back") < out.index("Reverting traffic to blue")
        assert f"switching traffic to green (attempt {n + 1})" in out
    else:  # killed while waiting to retry
        assert "resumed: waiting out the rest of the retry delay" in out
    assert "state    idle" not in out  # it did not start over
    assert_completed_once_each(out, db)
    _, journal = asyncio.run(stored(db))
    kinds = [e.kind for e in journal]
    assert kinds.count("resumed") == 1
    if flight.phase == "running":
        assert kinds[kinds.index("resumed") + 1] == "rollback"


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    code, out, err = interrupt_during_the_switch(db, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert out.rstrip().endswith(f"interrupted; run `deploysm demo --db {db}` again to resume")
    assert "Reverting traffic to blue" in out  # the engine rolled the attempt back
    snap, journal = asyncio.run(stored(db))
    assert (snap.status, snap.current_state.name, snap.in_flight) == (
        "active",
        "testing_green",
        None,
    )
    assert [e.kind for e in journal][-2:] == ["rollback", "interrupted"]

    r = rerun(db)
    assert r.returncode == 0, r.stderr
    assert (
        f"resuming deployment {MACHINE} from state testing_green (version {snap.version}, "
        "nothing in flight; its interrupted attempt was rolled back)" in r.stdout
    )
    assert "done so far: idle -> preparing_green -> deploying_green -> testing_green" in r.stdout
    assert_completed_once_each(r.stdout, db)


def test_the_demo_runs_from_its_default_file_and_then_starts_anew(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSM_DB"}
    args = [sys.executable, "-m", "deploysm", "demo", "--speed", "300"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"kept in .deploysm/demo.db as {MACHINE}" in first.stdout
    assert (tmp_path / ".deploysm" / "demo.db").is_file()
    second = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "the last demo finished (completed); starting a new one" in second.stdout
    assert "kept in .deploysm/demo.db as demo-blue-green-2" in second.stdout
    assert "state    idle" in second.stdout


def test_fresh_cancels_the_unfinished_one_and_starts_anew(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    assert interrupt_during_the_switch(db, signal.SIGINT)[0] == 130
    r = rerun(db, "--fresh", "--speed", "300")
    assert r.returncode == 0, r.stderr
    assert f"--fresh: cancelled the unfinished {MACHINE} (it was at testing_green)" in r.stdout
    assert "kept in" in r.stdout and "as demo-blue-green-2" in r.stdout
    assert "resuming" not in r.stdout
    snap, journal = asyncio.run(stored(db))
    assert snap.status == "cancelled"
    assert journal[-1].kind == "cancelled"
