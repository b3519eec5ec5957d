"""What a new user typed first, as they typed it: ``start``/``send`` of work nothing
would run, a ``--db`` typo, ``memory://``, ``validate`` of what ``worker --app`` takes,
``--help`` defaults, and one coded line for every error."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from deploysm.cli._main import build_parser
from deploysm.stores._postgres_sql import migrations as postgres_migrations
from deploysm.stores._sqlite_writer import migrations as sqlite_migrations

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.runtime_app:WORKFLOWS"
LINE = re.compile(r"^deploysm( [a-z]+)?: error: [A-Z_]+: \S")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYSM_DB", "DEPLOYSM_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def error_line(r: subprocess.CompletedProcess[str], code: str) -> str:
    """The one coded error line of a failed run."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, r.stderr
    assert LINE.match(lines[0]), lines[0]
    assert f": error: {code}: " in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "rt.db"
    r = cli("migrate", "--db", str(path))
    assert r.returncode == 0, r.stderr
    return str(path)


def inbox(db: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type FROM inbox ORDER BY seq").fetchall()
    conn.close()
    return [str(r[0]) for r in rows]


def machines(db: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id FROM machines ORDER BY id").fetchall()
    conn.close()
    return [str(r[0]) for r in rows]


# -- start / send: work nothing would run


def test_start_of_a_workflow_the_app_lacks_is_refused_and_writes_nothing(db: str) -> None:
    r = cli("start", "nosuchworkflow", "m1", "--app", APP, "--db", db)
    line = error_line(r, "UNKNOWN_WORKFLOW")
    assert "'nosuchworkflow'" in line and "has pipeline" in line
    assert machines(db) == []
    ok = cli("start", "pipeline", "m1", "--app", APP, "--db", db)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "started m1 (pipeline)"
    assert machines(db) == ["m1"]


def test_start_without_app_says_the_workflow_is_unchecked(db: str) -> None:
    r = cli("start", "pipeline", "m1", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "unchecked" in r.stdout and "--app" in r.stdout


@pytest.mark.parametrize("context", ["[1, 2]", '"text"', "3", "null", "true"])
def test_start_refuses_a_context_that_is_not_a_json_object(db: str, context: str) -> None:
    r = cli("start", "pipeline", "m1", "--context", context, "--db", db)
    assert "must be a JSON object" in error_line(r, "INVALID_CONTEXT")
    assert r.returncode == 2
    assert machines(db) == []


def test_send_of_an_event_the_workflow_lacks_is_refused_and_writes_nothing(db: str) -> None:
    assert cli("start", "pipeline", "m1", "--db", db).returncode == 0
    r = cli("send", "m1", "NOT_AN_EVENT", "--app", APP, "--db", db)
    line = error_line(r, "INVALID_EVENT")
    assert "'NOT_AN_EVENT'" in line and "its events are NEXT" in line
    assert "its state a takes NEXT" in line
    assert inbox(db) == []


def test_send_of_an_event_the_state_does_not_take_now_is_queued_with_a_note(
    tmp_path: Path,
) -> None:
    app = tmp_path / "two_events_app.py"
    app.write_text(
        "import deploysm\n"
        "def flow():\n"
        "    return deploysm.StateMachineConfig(id='flow', initial_state='a',\n"
        "        states=['a', 'b'], events=['GO', 'BACK'],\n"
        "        transitions=[deploysm.Transition('a', 'b', 'GO'),\n"
        "                     deploysm.Transition('b', 'a', 'BACK')])\n"
        "WORKFLOWS = {'flow': flow}\n"
    )
    db = str(tmp_path / "x.db")
    assert cli("migrate", "--db", db, cwd=tmp_path).returncode == 0
    assert cli("start", "flow", "m1", "--db", db, cwd=tmp_path).returncode == 0
    r = cli("send", "m1", "BACK", "--app", "two_events_app:WORKFLOWS", "--db", db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "its state a takes GO, not BACK" in r.stdout
    assert "deploysm history m1" in r.stdout
    assert inbox(db) == ["BACK"]


def test_send_without_app_says_the_event_was_queued_unchecked(db: str) -> None:
    assert cli("start", "pipeline", "m1", "--db", db).returncode == 0
    r = cli("send", "m1", "NOT_AN_EVENT", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "queued unchecked" in r.stdout and "deploysm history m1" in r.stdout
    checked = cli("send", "m1", "NEXT", "--app", APP, "--db", db)
    assert checked.stdout.strip() == "sent NEXT to m1"


def test_start_of_an_existing_id_gives_command_line_advice(db: str) -> None:
    assert cli("start", "pipeline", "m1", "--db", db).returncode == 0
    line = error_line(cli("start", "pipeline", "m1", "--db", db), "CONFLICT")
    assert "()" not in line
    assert "deploysm show m1" in line


# -- typos create no store


VERBS = [
    ["start", "pipeline", "m1"],
    ["send", "m1", "NEXT"],
    ["cancel", "m1"],
    ["prune", "--older-than", "1d"],
    ["worker", "--app", APP],
    ["ls"],
    ["show", "m1"],
    ["history", "m1"],
    ["unpark", "m1"],
    ["resolve", "m1", "retry", "--app", APP],
]


@pytest.mark.parametrize("verb", VERBS, ids=[v[0] for v in VERBS])
def test_a_verb_on_a_missing_store_fails_and_creates_nothing(
    tmp_path: Path, verb: list[str]
) -> None:
    path = tmp_path / "fresh2.db"
    r = cli(*verb, "--db", str(path))
    line = error_line(r, "NO_STORE")
    assert f"no store at {path}; run deploysm migrate --db {path}" in line
    assert r.returncode == 2
    assert list(tmp_path.iterdir()) == []
    nested = tmp_path / "no" / "such.db"
    assert cli(*verb, "--db", f"sqlite:///{nested}").returncode == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", VERBS, ids=[v[0] for v in VERBS])
def test_memory_store_is_refused_by_the_command_line(verb: list[str]) -> None:
    r = cli(*verb, "--db", "memory://")
    assert "gone when the command exits" in error_line(r, "INVALID_STORE_URL")
    assert r.returncode == 2


SQLITE_V = len(sqlite_migrations())  # the schema version a new store gets
POSTGRES_V = len(postgres_migrations())


def test_migrate_into_a_missing_directory_fails_unless_create(tmp_path: Path) -> None:
    path = tmp_path / "no" / "dir" / "x.db"
    r = cli("migrate", "--db", str(path))
    assert "--create" in error_line(r, "NO_STORE")
    assert list(tmp_path.iterdir()) == []
    made = cli("migrate", "--db", str(path), "--create")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"created schema v{SQLITE_V} at {path}"
    assert path.is_file()


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = cli("migrate", "--db", f"sqlite:///{path}")
    assert first.stdout.strip() == f"created schema v{SQLITE_V} at {path}", first.stderr
    again = cli("migrate", "--db", str(path))
    assert again.stdout.strip() == f"{path}: already up to date (schema v{SQLITE_V})"
    with sqlite3.connect(path) as conn:  # as a store of the release before 0004 would be
        conn.execute("DELETE FROM deploysm_schema WHERE version >= 4")
        conn.execute("ALTER TABLE machines DROP COLUMN last_error")
    conn.close()
    up = cli("migrate", "--db", str(path))
    assert up.stdout.strip() == f"upgraded schema v3 -> v{SQLITE_V} at {path}", up.stderr


def test_migrate_on_postgres_says_what_it_did() -> None:
    dsn = os.environ.get("DEPLOYSM_TEST_PG", "").strip()
    if not dsn:
        if os.environ.get("CI"):
            pytest.fail("CI is set but DEPLOYSM_TEST_PG is not")
        pytest.skip("needs DEPLOYSM_TEST_PG")
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"deploysm_t_{uuid.uuid4().hex[:10]}"  # a database of its own: the CLI uses public
    url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        r = cli("ls", "--db", url)
        assert "run deploysm migrate" in error_line(r, "NO_STORE")
        first = cli("migrate", "--db", url)
        assert first.stdout.startswith(f"created schema v{POSTGRES_V} at "), first.stderr
        again = cli("migrate", "--db", url)
        assert f"already up to date (schema v{POSTGRES_V})" in again.stdout, again.stderr
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- validate, help, error lines, install hints


def test_validate_takes_the_workflow_mapping_worker_app_takes() -> None:
    r = cli("validate", APP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{APP}['pipeline']: ok ('pipeline'" in r.stdout
    assert r.stdout.splitlines()[-1] == f"{APP}: ok (1 workflow(s))"


def test_validate_reports_each_bad_workflow_of_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "mixed_app.py").write_text(
        "import deploysm\n"
        "def good():\n"
        "    return deploysm.StateMachineConfig(id='good', initial_state='a',\n"
        "        states=['a', 'b'], events=['GO'],\n"
        "        transitions=[deploysm.Transition('a', 'b', 'GO')])\n"
        "def bad():\n"
        "    return deploysm.StateMachineConfig(id='bad', initial_state='a',\n"
        "        states=['a'], events=['GO'], transitions=[deploysm.Transition('a', 'zz', 'GO')])\n"
        "def broken():\n"
        "    raise RuntimeError('no config today')\n"
        "WORKFLOWS = {'good': good, 'bad': bad, 'broken': broken}\n"
    )
    r = cli("validate", "mixed_app:WORKFLOWS", cwd=tmp_path)
    assert r.returncode == 1
    assert "mixed_app:WORKFLOWS['good']: ok" in r.stdout
    assert "mixed_app:WORKFLOWS['bad']: invalid (1 error(s))" in r.stdout
    assert "'zz'" in r.stdout
    assert "calling its factory failed: RuntimeError: no config today" in r.stdout
    assert r.stdout.splitlines()[-1] == "mixed_app:WORKFLOWS: invalid (3 workflow(s))"


def test_every_option_of_every_verb_says_its_default_in_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "worker" in a.choices)
    assert isinstance(sub.choices, dict)
    missing = []
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split("\noptions:\n", 1)[-1].split())
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # flags (off unless given), required options, positionals
            opt = action.option_strings[-1]
            entry = text.split(f" {opt} ", 1)[-1]
            entry = re.split(r" --[a-z]", entry, maxsplit=1)[0]
            if "default" not in entry:
                missing.append(f"{name} {opt}")
    assert missing == []
    r = cli("worker", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for shown in ("(default: 16)", "(default: 30000)", "(default: 1000)", "$DEPLOYSM_DB"):
        assert shown in flat


@pytest.mark.parametrize(
    "args, code",
    [
        (["worker"], "USAGE"),  # argparse: --app is required
        (["nosuchverb"], "USAGE"),
        (["validate", "no-colon"], "USAGE"),
        (["ls"], "USAGE"),  # no --db, no $DEPLOYSM_DB
        (["ls", "--db", "mysql://x/y"], "INVALID_STORE_URL"),
        (["graph", "deploysm.examples.blue_green:blue_green_config", "--state", "zz"], "USAGE"),
    ],
)
def test_every_error_is_one_coded_line(args: list[str], code: str) -> None:
    r = cli(*args)
    error_line(r, code)
    assert r.returncode == 2


def test_the_postgres_driver_missing_gives_the_install_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nsys.modules['psycopg'] = None\nsys.modules['psycopg_pool'] = None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSM_DB"}
    r = subprocess.run(
        [sys.executable, "-m", "deploysm", "ls", "--db", "postgresql://u@127.0.0.1:1/db"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    line = error_line(r, "INVALID_STORE_URL")
    assert "pip install 'deploysm[postgres]'" in line


def test_make_test_says_why_postgres_tests_were_skipped() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DEPLOYSM_TEST_PG", "CI")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "postgres",
            "tests/integration/test_store_create.py",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout
    last = r.stdout.strip().splitlines()[-1:]
    assert any(
        line.startswith("1 PostgreSQL test(s) skipped: DEPLOYSM_TEST_PG is not set")
        and "DEPLOYSM_TEST_PG=postgresql://" in line
        for line in last
    ), r.stdout
