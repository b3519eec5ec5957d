"""The runtime from the shell: migrate, start, send, cancel and a worker stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploysm.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


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


def test_start_send_and_a_worker_finish_a_machine(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/rt.db"
    assert cli("migrate", db=db).returncode == 0
    started = cli("start", "pipeline", "m1", "--context", '{"who": "ops"}', db=db)
    assert started.returncode == 0, started.stderr
    assert cli("send", "m1", "NEXT", "--event-id", "e1", db=db).stdout.startswith("sent")
    again = cli("send", "m1", "NEXT", "--event-id", "e1", db=db)
    assert again.returncode == 0 and "ignored" in again.stdout
    assert (
        cli("send", "m1", "NEXT", "--event-id", "e2", "--payload", '{"n": 2}', db=db).returncode
        == 0
    )
    env = {**os.environ, "DEPLOYSM_DB": db, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploysm",
            "worker",
            "--app",
            "tests.acceptance.runtime_app:WORKFLOWS",
            "--poll-ms",
            "50",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap = asyncio.run(_load(tmp_path / "rt.db", "m1"))
            if snap is not None and snap.status == "completed":
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "stopped after" in out
    assert snap is not None and snap.status == "completed"
    assert snap.context == {"who": "ops", "seen": ["b", "c"]}
    assert [s.name for s in snap.history] == ["a", "b"]


async def _load(path: Path, machine_id: str) -> object:
    async with SQLiteStore(path) as store:
        return await store.load(machine_id)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("send", "ghost", "NEXT"), 1, "UNKNOWN_MACHINE"),
        (("start", "pipeline", "m1", "--context", "{oops"), 2, "not valid JSON"),
        (("cancel", "ghost"), 1, "UNKNOWN_MACHINE"),
        (("worker", "--app", "no_such_module:X"), 2, "cannot load --app"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    assert cli("migrate", db=f"sqlite:///{tmp_path}/e.db").returncode == 0
    done = cli(*args, db=f"sqlite:///{tmp_path}/e.db")
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_store_given_says_how(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSM_DB"}
    done = subprocess.run(
        [sys.executable, "-m", "deploysm", "start", "pipeline", "m1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2 and "--db" in done.stderr
