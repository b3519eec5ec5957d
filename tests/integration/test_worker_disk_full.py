"""A real ``deploysm worker`` process whose writes fail the way a full disk fails them
(RLIMIT_FSIZE: the kernel refuses every write past one byte, SQLite says "disk I/O
error"): the worker logs, backs off and retries instead of exiting; once the limit
is lifted (space is back) it finishes every machine, each event applied exactly once.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploysm.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.runtime_app:WORKFLOWS"
MACHINES = [f"m{i}" for i in range(1, 6)]

pytestmark = pytest.mark.skipif(
    not hasattr(resource, "prlimit"), reason="needs resource.prlimit (Linux)"
)


async def _prepare(db: Path) -> None:
    async with SQLiteStore(db) as store:
        for mid in MACHINES:
            await store.start("pipeline", mid, {})
            await store.send(mid, "NEXT", event_id=f"{mid}-1")
            await store.send(mid, "NEXT", event_id=f"{mid}-2")


async def _final(db: Path) -> dict[str, object]:
    async with SQLiteStore(db) as store:
        out: dict[str, object] = {}
        for mid in MACHINES:
            snap = await store.load(mid)
            kinds = [e.kind for e in await store.journal(mid)]
            out[mid] = (snap.status, snap.context, kinds.count("event_refused")) if snap else None
        return out


def _no_writes_past_one_byte() -> None:
    """In the worker process, before exec: a write past byte 1 of any file fails with
    EFBIG (instead of killing the process with SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))


def test_a_worker_rides_out_a_disk_that_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    asyncio.run(_prepare(db))
    keep = sqlite3.connect(db)  # keeps the -wal and -shm files the worker needs to open
    keep.execute("SELECT count(*) FROM machines").fetchone()
    env = {**os.environ, "DEPLOYSM_DB": str(db), "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "deploysm", "worker", "--app", APP, "--poll-ms", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_no_writes_past_one_byte,
    )
    try:
        time.sleep(2.0)  # several failed claims, with backoff
        alive_while_full = worker.poll() is None
        untouched = keep.execute("SELECT count(*) FROM machines WHERE snapshot IS NULL").fetchone()
        if alive_while_full:  # the disk has room again
            unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, unlimited)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker.poll() is None:
            sql = "SELECT count(*) FROM machines WHERE status = 'completed'"
            if keep.execute(sql).fetchone()[0] == len(MACHINES):
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        keep.close()
        if worker.poll() is None:
            worker.kill()
    assert alive_while_full, err
    assert untouched == (len(MACHINES),)  # nothing was written while the disk refused
    assert worker.returncode == 0, err
    assert "claiming failed (PERSISTENCE_ERROR" in err and "disk I/O error" in err
    assert "Traceback" not in err
    done = {"seen": ["b", "c"]}  # each effect ran once
    assert asyncio.run(_final(db)) == dict.fromkeys(MACHINES, ("completed", done, 0))
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT count(*) FROM inbox WHERE delivered_at IS NULL"
        assert conn.execute(sql).fetchone() == (0,)
    finally:
        conn.close()
