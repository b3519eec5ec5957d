"""What ``ls``, ``show`` and ``cancel`` say about how machines ended, as real
subprocesses on a SQLite store filled through the engine: a failure state is listed
``failed``, a machine whose retries ran out stays ``active`` with its last error in
the LAST ERROR column (``--json``: in full), a machine that has not run yet shows its
workflow, and cancelling an ended machine is refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import deploysm
from deploysm.stores import SQLiteStore
from deploysm.testing import VirtualClock

pytestmark = pytest.mark.slow

LONG = "the registry answered 503 Service Unavailable\nretry-after: 120 \x1b[2J " + "x" * 80


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYSM_DB", "DEPLOYSM_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _config(store: SQLiteStore) -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    def push(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        if ctx.get("broken"):
            raise RuntimeError(LONG)

    T = deploysm.Transition
    return deploysm.StateMachineConfig(
        id="ship",
        initial_state="idle",
        states=["idle", "pushing", "done", "failed"],
        events=["GO", "DONE", "FAIL"],
        transitions=[
            T("idle", "pushing", "GO"),
            T("pushing", "done", "DONE"),
            T(["idle", "pushing"], "failed", "FAIL"),
        ],
        effects={"pushing": deploysm.effect().execute(push).set_idempotent(True).build()},
        retry_policy=deploysm.RetryPolicy(max_attempts=2, initial_delay_ms=5, jitter_factor=0),
        store=store,
        clock=VirtualClock(),
    )


async def _fill(path: Path) -> None:
    async with SQLiteStore(path) as store:
        cfg = _config(store)
        runs = {
            "s-done": ({}, ["GO", "DONE"]),
            "s-exhausted": ({"broken": True}, ["GO"]),
            "s-failed": ({"broken": True}, ["GO", "FAIL"]),
        }
        for mid, (ctx, events) in runs.items():
            sm = deploysm.create_state_machine(cfg, ctx, mid)
            for event in events:
                await sm.dispatch(event)
        await store.start("release", "s-new", {})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("status") / "status.db"
    asyncio.run(_fill(path))
    return str(path)


def _rows(out: str) -> dict[str, str]:
    lines = out.splitlines()
    assert re.match(
        r"ID\s+WORKFLOW\s+STATUS\s+STATE\s+VERSION\s+UPDATED \(UTC\)\s+LAST ERROR$", lines[0]
    )
    return {line.split()[0]: line for line in lines[1:]}


def test_a_failure_state_is_listed_as_failed(db: str) -> None:
    r = cli("ls", "--db", db, "--status", "failed")
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert list(rows) == ["s-failed"]
    assert rows["s-failed"].split()[1:4] == ["ship", "failed", "failed"]
    assert "RETRY_EXHAUSTED: " in rows["s-failed"]  # why it gave up


def test_exhausted_retries_stay_active_with_the_error_shown(db: str) -> None:
    r = cli("ls", "--db", db)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    exhausted = rows["s-exhausted"]
    assert exhausted.split()[1:4] == ["ship", "active", "idle"]
    error = exhausted[exhausted.index("RETRY_EXHAUSTED") :]
    assert len(error) == 60 and error.endswith("…")  # truncated
    assert "\x1b" not in r.stdout and "\n" not in error  # one line, escaped
    assert rows["s-done"].split()[2] == "completed"
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3}$", rows["s-done"])  # no error: nothing after


def test_ls_json_carries_the_error_in_full_and_names_the_workflow(db: str) -> None:
    r = cli("ls", "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    by_id = {m["machine_id"]: m for m in json.loads(r.stdout)}
    assert by_id["s-exhausted"]["workflow"] == "ship"  # as the table names it
    assert by_id["s-new"]["workflow"] == "release"
    error = by_id["s-exhausted"]["last_error"]
    assert error.startswith("RETRY_EXHAUSTED: ") and LONG in error
    assert by_id["s-done"]["last_error"] is None


def test_a_machine_that_has_not_run_shows_its_workflow(db: str) -> None:
    r = cli("show", "s-new", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "workflow     release\n" in r.stdout
    assert "()" not in r.stdout
    rows = _rows(cli("ls", "--db", db).stdout)
    assert rows["s-new"].split()[1:3] == ["release", "active"]
    assert "()" not in rows["s-new"]


@pytest.mark.parametrize(("mid", "status"), [("s-done", "completed"), ("s-failed", "failed")])
def test_cancel_of_an_ended_machine_is_refused(db: str, mid: str, status: str) -> None:
    r = cli("cancel", mid, "--db", db)
    assert r.returncode == 1, r.stdout
    assert r.stdout == ""
    assert f"machine {mid!r} is already {status}" in r.stderr
    assert "NOT_ACTIVE" in r.stderr and "Traceback" not in r.stderr


def test_cancel_of_an_active_machine_is_still_requested(db: str) -> None:
    r = cli("cancel", "s-exhausted", "--db", db)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "cancel requested for s-exhausted\n"


# -- validate

ROOT = Path(__file__).resolve().parents[2]


def validate(target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploysm", "validate", f"tests.acceptance.status_app:{target}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_validate_does_not_call_the_compensated_state_unreachable() -> None:
    r = validate("compensating")
    assert r.returncode == 0, r.stderr
    assert "warning:" not in r.stdout, r.stdout
    assert r.stdout.endswith("0 warning(s))\n")


def test_validate_lists_the_problems_of_a_config_refused_when_built() -> None:
    r = validate("broken")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "error: failure_states names 'deploying', which is not a final state\n" in r.stdout
    assert r.stdout.endswith("tests.acceptance.status_app:broken: invalid (1 error(s))\n")
    assert "Traceback" not in r.stderr
