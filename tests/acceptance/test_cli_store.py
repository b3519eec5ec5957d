"""``deploysm ls / show / history / resolve`` as real subprocesses, on a SQLite store
filled by running machines of ``store_app.release`` through the engine.

The parked machine is parked honestly: a subprocess sends ``MIGRATE`` and its
non-idempotent effect without rollback SIGKILLs the process once the intent is
durable; resuming the machine afterwards parks it in ``needs_attention``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import store_app

import deploysm
from deploysm.stores import Codec, EncryptedCodec, SQLiteStore
from deploysm.testing import VirtualClock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.store_app:REGISTRY"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DEPLOYSM_DB", "DEPLOYSM_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def ok(*args: str, **env: str) -> str:
    r = cli(*args, **env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- building the store


def config(store: SQLiteStore) -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    clock = VirtualClock(datetime.now(UTC))  # retry delays pass at once
    return dataclasses.replace(store_app.release(), store=store, clock=clock)


async def drive(db: Path, machine_id: str, events: list[str], codec: Codec | None = None) -> None:
    async with SQLiteStore(db, codec=codec) as store:
        sm = deploysm.create_state_machine(config(store), {"app": machine_id}, machine_id)
        for event in events:
            assert (await sm.dispatch(event)).success
        if "CANCEL" in machine_id:
            await sm.cancel()


def park(db: Path, machine_id: str) -> None:
    """START and SHIP in-process; MIGRATE in a process that dies inside the effect;
    then resume, which parks the machine."""
    asyncio.run(drive(db, machine_id, ["START", "SHIP"]))
    crash = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.store_app", str(db), machine_id],
        env={**os.environ, "PYTHONPATH": str(ROOT), "STORE_APP_CRASH": "1"},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert crash.returncode == -signal.SIGKILL, crash.stderr

    async def resume() -> None:
        async with SQLiteStore(db) as store:
            sm = deploysm.create_state_machine(config(store), {}, machine_id)
            result = await sm.resume()
            assert result is not None and not result.success
            assert sm.status == "needs_attention"

    asyncio.run(resume())


async def load(db: Path, machine_id: str) -> tuple[deploysm.SerializableState, list[Any]]:
    async with SQLiteStore(db) as store:
        snap = await store.load(machine_id)
        assert snap is not None
        return snap, await store.journal(machine_id)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("store") / "store.db"
    asyncio.run(drive(path, "r-done", ["START", "SHIP", "MIGRATE", "FINISH"]))
    asyncio.run(drive(path, "r-active", ["START"]))
    asyncio.run(drive(path, "r-CANCEL", ["START"]))
    park(path, "r-parked")
    return str(path)


@pytest.fixture
def parked_db(tmp_path: Path) -> Path:
    path = tmp_path / "parked.db"
    park(path, "p1")
    return path


# -- ls


def test_ls_lists_every_machine(db: str) -> None:
    lines = ok("ls", "--db", db).splitlines()
    assert re.match(r"ID\s+WORKFLOW\s+STATUS\s+STATE\s+VERSION\s+UPDATED", lines[0])
    rows = {line.split()[0]: line.split()[1:5] for line in lines[1:]}
    assert rows == {
        "r-CANCEL": ["release", "cancelled", "building", rows["r-CANCEL"][3]],
        "r-active": ["release", "active", "building", rows["r-active"][3]],
        "r-done": ["release", "completed", "done", rows["r-done"][3]],
        "r-parked": ["release", "needs_attention", "shipping", rows["r-parked"][3]],
    }


@pytest.mark.parametrize(
    ("status", "ids"),
    [("needs_attention", ["r-parked"]), ("completed", ["r-done"]), ("active", ["r-active"])],
)
def test_ls_filters_by_status(db: str, status: str, ids: list[str]) -> None:
    lines = ok("ls", "--status", status, DEPLOYSM_DB=db).splitlines()  # --db from the env
    assert [line.split()[0] for line in lines[1:]] == ids


def test_ls_says_when_there_is_nothing(db: str, tmp_path: Path) -> None:
    assert ok("ls", "--db", db, "--status", "failed") == "no machines with status failed\n"
    empty = tmp_path / "empty.db"
    assert cli("migrate", "--db", str(empty)).returncode == 0
    assert ok("ls", "--db", f"sqlite:///{empty}") == "no machines\n"
    empty.unlink()
    empty.touch()  # an empty file is no store: ls neither writes a schema into it nor lists it
    assert "NO_STORE: no store at" in one_line_error(cli("ls", "--db", str(empty)), 2)
    assert empty.read_bytes() == b""


# -- show


def test_show_a_parked_machine(db: str) -> None:
    out = ok("show", "r-parked", "--db", db)
    assert "status       needs_attention" in out
    assert "state        shipping" in out
    assert "in flight    shipping -> migrated on MIGRATE" in out
    assert "attempt 1, phase running" in out
    assert "idempotency key r-parked:" in out
    assert "last error   StateMachineError (NEEDS_ATTENTION) in shipping: attempt 1" in out
    assert "path         idle -> building -> shipping" in out
    assert re.search(r"\n  v\d+ shipping  \(from building on SHIP, key r-parked:", out)
    context = out[out.index("\ncontext\n") + 9 :]
    assert json.loads(context) == {"app": "r-parked", "shipped": 1}


def test_show_json_is_the_snapshot(db: str) -> None:
    data = json.loads(ok("show", "r-parked", "--db", db, "--json"))
    assert data["machine_id"] == "r-parked"
    snap = deploysm.SerializableState.from_dict(data["snapshot"])
    assert snap.status == "needs_attention"
    assert snap.in_flight is not None and snap.in_flight.attempt == 1
    done = json.loads(ok("show", "r-done", "--db", db, "--json"))
    assert done["snapshot"]["status"] == "completed"
    assert done["snapshot"]["in_flight"] is None


# -- history


def test_history_reads_as_a_timeline(db: str) -> None:
    lines = ok("history", "r-done", "--db", db).splitlines()
    assert lines[0] == "r-done: 15 journal entries (times in UTC)"
    assert re.match(r"TIME\s+V\s+KIND\s+WHAT HAPPENED", lines[1])
    text = "\n".join(lines)
    for pattern in [
        r"\s1\s+intent\s+idle -> building on START \(attempt 1\)",
        r"attempt_failed\s+attempt 1 failed: EffectError: registry busy \(simulated\)",
        r"retry_scheduled\s+retry in 1,234 ms \(attempt 2 next\)",
        r"attempt\s+attempt 2 starts",
        r"committed\s+committed idle -> building on START \(2 attempts\)",
        r"rollback\s+rolled back attempt 1",
        r"committed\s+committed building -> shipping on SHIP \(2 attempts\)",
        r"completed\s+completed in done",
    ]:
        assert re.search(pattern, text), pattern
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  ", line) for line in lines[2:])


def test_history_of_a_parked_machine(db: str) -> None:
    out = ok("history", "r-parked", "--db", db)
    assert re.search(r"intent\s+shipping -> migrated on MIGRATE \(attempt 1\)", out)
    assert re.search(r"resumed\s+resumed after a restart: attempt 1 was running", out)
    assert re.search(r"needs_attention\s+needs attention: attempt 1 was interrupted", out)


def test_history_json(db: str) -> None:
    entries = json.loads(ok("history", "r-done", "--db", db, "--json"))
    assert [e["kind"] for e in entries] == [
        *("intent", "attempt_failed", "retry_scheduled", "attempt", "committed"),
        *("intent", "attempt_failed", "rollback", "retry_scheduled", "attempt", "committed"),
        *("intent", "committed", "committed", "completed"),
    ]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert entries[0]["data"]["event"] == "START"
    datetime.fromisoformat(entries[0]["at"])


# -- resolve


def test_resolve_retry_runs_the_effect_again(parked_db: Path) -> None:
    r = cli(
        *("resolve", "p1", "retry", "--db", str(parked_db), "--app", APP),
        *("--by", "alice", "--reason", "checked the database"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("resolved p1 (retry by alice): shipping -> migrated ran again")
    assert "now active in migrated" in r.stdout
    snap, journal = asyncio.run(load(parked_db, "p1"))
    assert (snap.status, snap.current_state.name, snap.in_flight) == ("active", "migrated", None)
    assert snap.context["migrations"] == 1
    resolved = [e for e in journal if e.kind == "resolved"]
    assert len(resolved) == 1
    assert dict(resolved[0].data) == {
        "action": "retry",
        "by": "alice",
        "reason": "checked the database",
    }
    out = ok("history", "p1", "--db", str(parked_db))
    assert "resolved: retry by alice (checked the database)" in out


def test_resolve_mark_failed_records_the_failure(parked_db: Path) -> None:
    r = cli("resolve", "p1", "mark_failed", "--db", str(parked_db), "--app", APP, "--by", "bob")
    assert r.returncode == 0, r.stderr
    assert "shipping -> migrated recorded as failed; now active in shipping" in r.stdout
    snap, journal = asyncio.run(load(parked_db, "p1"))
    assert (snap.status, snap.current_state.name, snap.in_flight) == ("active", "shipping", None)
    assert [e.kind for e in journal][-2:] == ["resolved", "failed"]
    assert "migrations" not in snap.context


def test_resolve_retry_that_fails_again_exits_1(parked_db: Path) -> None:
    r = cli("resolve", "p1", "retry", "--db", str(parked_db), "--app", APP, STORE_APP_FAIL="1")
    assert r.returncode == 1, r.stderr
    assert "shipping -> migrated failed again: " in r.stdout
    assert "schema locked (simulated)" in r.stdout
    assert "now active in shipping" in r.stdout
    assert "Traceback" not in r.stderr
    snap, journal = asyncio.run(load(parked_db, "p1"))
    assert (snap.status, snap.current_state.name, snap.in_flight) == ("active", "shipping", None)
    assert [e.kind for e in journal][-4:] == ["resolved", "attempt", "attempt_failed", "failed"]


def test_resolve_refuses_a_machine_that_is_not_parked(db: str) -> None:
    r = cli("resolve", "r-done", "retry", "--db", db, "--app", APP)
    line = one_line_error(r, 1)
    assert "'r-done' is completed, not needs_attention: nothing to resolve" in line


# -- errors: one line, the documented exit code, no traceback


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["show", "nope"], 1, "machine 'nope' not found in "),
        (["history", "nope"], 1, "machine 'nope' not found in "),
        (["resolve", "nope", "retry", "--app", APP], 1, "machine 'nope' not found in "),
        (["resolve", "r-parked", "retry"], 2, "resolve needs --app"),
        (["resolve", "r-parked", "retry", "--app", "no_such_module_x:APP"], 2, "--app"),
        (
            ["resolve", "r-parked", "retry", "--app", "deploysm.examples.simple:simple_config"],
            2,
            "has no workflow whose config id is 'release'",
        ),
    ],
)
def test_errors_on_a_good_store(db: str, args: list[str], code: int, expected: str) -> None:
    line = one_line_error(cli(*args, "--db", db), code)
    assert expected in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ls", "--db", "mysql://somewhere/db"], "unknown store URL scheme 'mysql'"),
        (["ls", "--db", "sqlite://x.db"], "bad SQLite URL"),
        (
            ["show", "x", "--db", "/nonexistent/dir/x.db"],
            "NO_STORE: no store at /nonexistent/dir/x.db; run deploysm migrate --db",
        ),
        (["history", "x"], "no store: pass --db URL or set DEPLOYSM_DB"),
    ],
)
def test_bad_db_exits_2(args: list[str], expected: str) -> None:
    assert expected in one_line_error(cli(*args), 2)


def test_a_file_that_is_not_a_database_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    line = one_line_error(cli("ls", "--db", str(tmp_path / "junk.db")), 2)
    assert "cannot open --db" in line


def test_an_encrypted_store_needs_its_keys(tmp_path: Path) -> None:
    key = EncryptedCodec.generate_key()
    codec = EncryptedCodec({"k1": key}, "k1")
    path = tmp_path / "secret.db"
    asyncio.run(drive(path, "s1", ["START"], codec=codec))
    assert ok("ls", "--db", str(path)).splitlines()[1].split()[:3] == ["s1", "release", "active"]
    line = one_line_error(cli("show", "s1", "--db", str(path)), 1)
    assert "stored snapshot of 's1'" in line and "--keys-env" in line
    keys = f"k1:{EncryptedCodec.key_to_text(key)}"
    assert "state        building" in ok("show", "s1", "--db", str(path), DEPLOYSM_KEYS=keys)
    out = ok("show", "s1", "--db", str(path), "--keys-env", "MY_KEYS", MY_KEYS=keys)
    assert "state        building" in out
    other = f"k1:{EncryptedCodec.key_to_text(EncryptedCodec.generate_key())}"
    line = one_line_error(cli("show", "s1", "--db", str(path), DEPLOYSM_KEYS=other), 1)
    assert "snapshot of 's1' failed authentication" in line
    line = one_line_error(cli("show", "s1", "--db", str(path), "--keys-env", "UNSET_VAR_X"), 2)
    assert "UNSET_VAR_X" in line
