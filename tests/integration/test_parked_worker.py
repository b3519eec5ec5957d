"""One unreadable snapshot row does not stop the fleet: a real ``deploysm worker``
process over a real SQLite file with one corrupted row finishes every good machine,
parks the bad one (``ls`` shows it, ``show`` says why) and keeps serving; once the row
reads again, ``unpark`` puts it back and a worker finishes it too."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from deploysm import Worker
from deploysm.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.runtime_app:WORKFLOWS"
GOOD = [f"m{i}" for i in range(1, 8) if i != 4]
BAD = "m4"


def _env(db: Path) -> dict[str, str]:
    return {**os.environ, "DEPLOYSM_DB": str(db), "PYTHONPATH": str(ROOT)}


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deploysm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(db), cwd=ROOT, timeout=60)


def statuses(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return dict(conn.execute("SELECT id, status FROM machines").fetchall())
    finally:
        conn.close()


def set_snapshot(db: Path, machine_id: str, blob: bytes) -> bytes:
    """Overwrite a row's snapshot bytes behind the store's back; returns the old ones."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        with conn:
            sql = "SELECT snapshot FROM machines WHERE id = ?"
            (old,) = conn.execute(sql, (machine_id,)).fetchone()
            conn.execute("UPDATE machines SET snapshot = ? WHERE id = ?", (blob, machine_id))
        return bytes(old)
    finally:
        conn.close()


async def _prepare(db: Path) -> None:
    """Every machine run once (so each has a snapshot), then one more event each."""
    async with SQLiteStore(db) as store:
        for mid in [*GOOD, BAD]:
            await store.start("pipeline", mid, {})
            await store.send(mid, "NEXT")
        sys.path.insert(0, str(ROOT))
        from tests.acceptance.runtime_app import WORKFLOWS

        await Worker(store, WORKFLOWS).run_until_idle()
        for mid in [*GOOD, BAD]:
            await store.send(mid, "NEXT")


async def _finish(db: Path) -> None:
    async with SQLiteStore(db) as store:
        from tests.acceptance.runtime_app import WORKFLOWS

        await Worker(store, WORKFLOWS).run_until_idle()


def test_a_worker_parks_an_unreadable_row_and_finishes_the_others(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    asyncio.run(_prepare(db))
    good_bytes = set_snapshot(db, BAD, b"\x00not a snapshot\xff")

    worker = subprocess.Popen(
        [sys.executable, "-m", "deploysm", "worker", "--app", APP, "--poll-ms", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(db),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker.poll() is None:
            seen = statuses(db)
            if all(seen[m] == "completed" for m in GOOD) and seen[BAD] == "needs_attention":
                break
            time.sleep(0.05)
        alive = worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert alive, f"the worker exited: {err}"
    assert worker.returncode == 0, err
    assert statuses(db) == {**dict.fromkeys(GOOD, "completed"), BAD: "needs_attention"}
    assert f"machine {BAD} parked" in err

    listed = cli(db, "ls", "--status", "needs_attention")
    assert listed.returncode == 0 and BAD in listed.stdout and "m1" not in listed.stdout
    shown = cli(db, "show", BAD)
    assert shown.returncode == 0, shown.stderr
    assert "parked: its snapshot cannot be read" in shown.stdout
    assert "is not valid JSON" in shown.stdout and f"deploysm unpark {BAD}" in shown.stdout

    refused = cli(db, "unpark", BAD)  # still unreadable: it stays parked
    assert refused.returncode == 1 and "INVALID_SNAPSHOT" not in refused.stdout
    assert "not valid JSON" in refused.stderr and statuses(db)[BAD] == "needs_attention"

    set_snapshot(db, BAD, good_bytes)  # the row reads again (e.g. its key is back)
    unparked = cli(db, "unpark", BAD)
    assert unparked.returncode == 0, unparked.stderr
    assert f"unparked {BAD}: active in b" in unparked.stdout
    history = cli(db, "history", BAD)
    assert "parked: its snapshot cannot be read" in history.stdout
    assert "unparked by an operator: active again" in history.stdout
    asyncio.run(_finish(db))
    assert set(statuses(db).values()) == {"completed"}
