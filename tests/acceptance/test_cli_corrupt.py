"""The CLI on a store an operator edited by hand, on ids that are not text, and on a
``--db`` whose folder cannot exist: one line ``deploysm VERB: error: CODE: message``
on stderr, a non-zero exit, never a traceback.

The SQLite files are corrupted with the ``sqlite3`` module, as one would with the
``sqlite3`` shell; to store NULLs the NOT NULL constraints are first edited out of the
schema (``writable_schema``), which a hand-edited file may well have done too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import store_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deploysm
from deploysm import ErrorCode, StateMachineError
from deploysm.cli._main import main
from deploysm.stores import SQLiteStore
from deploysm.testing import VirtualClock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
LINE = re.compile(r"deploysm (\w+): error: ([A-Z_]+): \S")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYSM_DB", "DEPLOYSM_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def coded_line(stdout: str, stderr: str, exit_code: int) -> str:
    """The error's code, after checking that it came as one coded line."""
    assert "Traceback" not in stderr, stderr
    assert exit_code != 0
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    m = LINE.match(lines[0])
    assert m is not None, lines[0]
    assert m[2] in CODES, lines[0]
    return m[2]


async def _fill(db: Path) -> None:
    async with SQLiteStore(db) as store:
        config = dataclasses.replace(
            store_app.release(), store=store, clock=VirtualClock(datetime.now(UTC))
        )
        sm = deploysm.create_state_machine(config, {"app": "m1"}, "m1")
        assert (await sm.dispatch("START")).success


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding machine m1 (a few journal entries), its NOT NULLs edited away."""
    path = tmp_path_factory.mktemp("corrupt") / "base.db"
    asyncio.run(_fill(path))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = replace(sql, 'NOT NULL', '')"
        " WHERE name IN ('journal', 'machines')"
    )
    conn.commit()
    conn.close()
    return path


def corrupt(base: Path, into: Path, sql: str, *params: Any) -> str:
    shutil.copy(base, into)
    with contextlib.closing(sqlite3.connect(into)) as conn:
        assert conn.execute(sql, params).rowcount >= 1
        conn.commit()
    return str(into)


BAD_ROWS = [
    ("journal", "data", "{bad"),
    ("journal", "data", "[1, 2]"),
    ("journal", "data", "5"),
    ("journal", "data", 5),
    ("journal", "data", b"\xff\xfe"),
    ("journal", "data", None),
    ("journal", "at", "yesterday"),
    ("journal", "at", 12),
    ("journal", "at", 1.5),
    ("journal", "at", None),
    ("journal", "kind", None),
    ("journal", "kind", b"\x00"),  # a blob: text affinity turns a number into text
    ("journal", "version", "abc"),
    ("journal", "version", None),
    ("machines", "updated_at", "not a time"),
    ("machines", "updated_at", None),
    ("machines", "updated_at", 3),
    ("machines", "version", "abc"),
    ("machines", "status", None),
    ("machines", "state", b"x"),
    ("machines", "version", -1),
]


@pytest.mark.parametrize(("table", "column", "value"), BAD_ROWS)
def test_a_hand_edited_row_is_one_coded_line(
    base_db: Path, tmp_path: Path, table: str, column: str, value: Any
) -> None:
    db = corrupt(base_db, tmp_path / "bad.db", f"UPDATE {table} SET {column} = ?", value)
    verbs = [["history", "m1"]] if table == "journal" else [["ls"], ["show", "m1"]]
    for verb in verbs:
        r = cli(*verb, "--db", db)
        assert coded_line(r.stdout, r.stderr, r.returncode) == "CORRUPT_ROW"
        assert r.returncode == 1
        assert column in r.stderr, r.stderr


@pytest.mark.parametrize("column", ["id", "state", "workflow"])
def test_text_that_is_not_utf8_in_the_store(base_db: Path, tmp_path: Path, column: str) -> None:
    sql = f"UPDATE machines SET {column} = CAST(X'6DFF' AS TEXT)"
    db = corrupt(base_db, tmp_path / "bad.db", sql)
    r = cli("ls", "--db", db)
    assert coded_line(r.stdout, r.stderr, r.returncode) == "CORRUPT_ROW"


def test_a_snapshot_version_of_2_to_the_63(base_db: Path, tmp_path: Path) -> None:
    snapshot = json.loads(
        sqlite3.connect(base_db).execute("SELECT snapshot FROM machines").fetchone()[0]
    )
    snapshot["version"] = 2**63
    sql = "UPDATE machines SET snapshot = ?"
    db = corrupt(base_db, tmp_path / "big.db", sql, json.dumps(snapshot).encode())
    r = cli("show", "m1", "--db", db)
    assert coded_line(r.stdout, r.stderr, r.returncode) == "INVALID_SNAPSHOT"
    assert "version" in r.stderr
    r = cli("resolve", "m1", "retry", "--db", db, "--app", "tests.acceptance.store_app:REGISTRY")
    assert coded_line(r.stdout, r.stderr, r.returncode) == "INVALID_SNAPSHOT"


LONE = "m\udcff"  # what Python makes of the byte 0xff on a UTF-8 command line


@pytest.mark.parametrize(
    "args",
    [
        ["show", LONE],
        ["history", LONE],
        ["start", "release", LONE],
        ["start", LONE, "m2"],
        ["send", LONE, "GO"],
        ["send", "m1", LONE],
        ["send", "m1", "GO", "--event-id", LONE],
        ["cancel", LONE],
    ],
)
def test_a_lone_surrogate_on_the_command_line(
    base_db: Path, tmp_path: Path, args: list[str]
) -> None:
    db = str(tmp_path / "s.db")
    shutil.copy(base_db, db)
    r = cli(*args, "--db", db)
    code = coded_line(r.stdout, r.stderr, r.returncode)
    assert code in ("INVALID_TEXT", "UNKNOWN_MACHINE"), r.stderr
    assert "\\udcff" in r.stderr or "\\xff" in r.stderr


@pytest.mark.parametrize(
    "verb",
    [["start", "release", "m1"], ["migrate"], ["migrate", "--create"], ["send", "m1", "GO"]],
)
@pytest.mark.parametrize("where", ["/etc/hostname/x.db", "/proc/no/such/dir/x.db", "/proc/x.db"])
def test_a_db_whose_folder_cannot_be_made(verb: list[str], where: str) -> None:
    r = cli(*verb, "--db", where)
    # only migrate creates a store (--create: its folders too); other verbs find none
    creates = verb == ["migrate", "--create"] or (verb == ["migrate"] and where == "/proc/x.db")
    expected = "PERSISTENCE_ERROR" if creates else "NO_STORE"
    assert coded_line(r.stdout, r.stderr, r.returncode) == expected
    assert where in r.stderr


# -- the property: any value in any column an operator may edit


COLUMNS = {
    "journal": ["data", "at", "kind", "version", "machine_id"],
    "machines": ["updated_at", "version", "status", "state", "workflow", "definition_id"],
}
values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.binary(max_size=12),
    st.text(max_size=24),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["{}", "[]", '{"a": 1}', "null", "2025-01-01T00:00:00+00:00", "2025-13-01"]),
)
edits = st.lists(
    st.sampled_from([(t, c) for t, cs in COLUMNS.items() for c in cs]).flatmap(
        lambda tc: st.tuples(st.just(tc[0]), st.just(tc[1]), values)
    ),
    min_size=1,
    max_size=3,
)


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits)
def test_any_hand_edit_gives_output_or_one_coded_line(base_db: Path, edit: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fuzz.db"
        shutil.copy(base_db, db)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            for table, column, value in edit:
                conn.execute(f"UPDATE {table} SET {column} = ?", (value,))
            conn.commit()
        for verb in (["ls"], ["show", "m1"], ["history", "m1"], ["ls", "--json"]):
            code, out, err = run(*verb, "--db", str(db))
            if code == 0:
                assert err == ""
            else:
                coded_line(out, err, code)


def test_the_store_reads_raise_corrupt_row_for_library_users(base_db: Path, tmp_path: Path) -> None:
    db = corrupt(base_db, tmp_path / "bad.db", "UPDATE journal SET at = 'soon'")

    async def read() -> None:
        async with SQLiteStore(db) as store:
            with pytest.raises(StateMachineError) as info:
                await store.journal("m1")
            assert info.value.code == ErrorCode.CORRUPT_ROW
            assert "'m1'" in str(info.value) and "at" in str(info.value)
            assert [i.machine_id for i in await store.list()] == ["m1"]

    asyncio.run(read())
