"""What ``ls``, ``show`` and ``history`` print when the store holds hostile text:
machine ids, workflow and state names, event types, error messages and journal data
full of ESC, CR, BEL, newlines, C1 controls, bidi overrides and line separators.

Human output must carry none of them (each is shown escaped, and a newline inside a
value never starts a line of its own); ``--json`` output stays valid JSON holding the
true values. The property runs the CLI's ``main()`` in-process (hundreds of stores);
one test runs the installed command as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import deploysm
from deploysm.cli._main import main
from deploysm.stores import JournalRecord, SQLiteStore
from deploysm.testing import VirtualClock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NASTY = "\x1b\r\n\x07\x00\t\x08\x7f\x85\x9b\u202e\u2066\u2028\u2029\u200b\ufeff\xa0"

# Text SQLite can hold (no lone surrogates), heavy on control characters.
hostile = st.text(
    st.one_of(st.sampled_from(NASTY), st.characters(exclude_categories=("Cs",))),
    min_size=1,
    max_size=8,
)
KINDS = ["intent", "attempt_failed", "resolved", "committed", "failed", "started"]
FIELDS = ["source", "to", "event", "message", "error", "by", "reason", "workflow", "state"]


def controls(text: str) -> list[str]:
    """The characters of ``text`` a terminal could act on (line breaks aside)."""
    return [c for c in text if not c.isprintable() and c != "\n"]


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def config(names: dict[str, str], store: SQLiteStore) -> deploysm.StateMachineConfig:
    a, b, c = names["a"], names["b"], names["c"]

    def flaky(ctx: dict[str, Any], state: deploysm.State[str]) -> deploysm.EffectResult:
        return deploysm.EffectResult(state.attempts > 1, names["message"])

    def broken(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        raise RuntimeError(names["message"])

    return deploysm.StateMachineConfig(
        id=names["workflow"],
        initial_state=a,
        states=[a, b, c],
        events=[names["go"], names["stop"]],
        transitions=[
            deploysm.Transition(a, b, names["go"]),
            deploysm.Transition(b, c, names["stop"]),
        ],
        effects={
            b: deploysm.effect().execute(flaky).set_idempotent(True).build(),
            c: deploysm.effect().execute(broken).set_idempotent(True).build(),
        },
        retry_policy=deploysm.RetryPolicy(max_attempts=2, initial_delay_ms=5, jitter_factor=0),
        store=store,
        clock=VirtualClock(),
    )


async def build(db: Path, names: dict[str, str], extra: list[tuple[str, dict[str, str]]]) -> Any:
    async with SQLiteStore(db) as store:
        mid = names["id"]  # after `--`: an id may start with a dash
        context = {names["key"]: names["value"]}
        sm = deploysm.create_state_machine(config(names, store), context, mid)
        await sm.dispatch(names["go"])
        await sm.dispatch(names["stop"])  # fails: last_error holds the message
        snap = await store.load(mid)
        assert snap is not None
        at = snap.current_state.timestamp
        records = [JournalRecord(kind, at, data) for kind, data in extra]
        await store.save(snap, expected_version=snap.version, journal=records)
        await store.start(names["workflow2"], names["id2"], {names["key"]: names["value"]})
        return snap, await store.journal(mid)


NAMES = ("id", "id2", "workflow", "workflow2", "a", "b", "c", "go", "stop", "message", "key")
names_st = st.fixed_dictionaries(dict.fromkeys((*NAMES, "value"), hostile)).filter(
    lambda n: len({n["a"], n["b"], n["c"]}) == 3 and n["go"] != n["stop"] and n["id"] != n["id2"]
)
extra_st = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(KINDS), hostile),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), hostile), hostile, max_size=4),
    ),
    max_size=3,
)

ESC = {k: f"{k}\x1b[2J\r\n\x07\u202e" for k in ("id", "id2", "workflow", "workflow2", "message")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(names_st, extra_st)
@example(
    ESC
    | {"a": "a\x1b", "b": "b\n", "c": "c\x9b", "go": "\x1b[2J", "stop": "S\r"}
    | {"key": "k\x07", "value": "v\u2028"},
    [("\x1b]0;title\x07", {"\x1b[31m": "x\ny"}), ("intent", {"event": "\x1b[2J"})],
)
def test_no_control_character_reaches_the_output(
    names: dict[str, str], extra: list[tuple[str, dict[str, str]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "hostile.db")
        snap, journal = asyncio.run(build(Path(db), names, extra))
        mid = names["id"]

        code, out, err = run("ls", "--db", db)
        assert (code, err) == (0, "")
        assert controls(out) == []
        assert len(out.splitlines()) == 1 + 2  # the header and one line per machine

        code, out, err = run("show", "--db", db, "--", mid)
        assert (code, err) == (0, "")
        assert controls(out) == []
        context = out[out.index("\ncontext\n") + 9 :]
        assert json.loads(context) == snap.context

        code, out, err = run("history", "--db", db, "--", mid)
        assert (code, err) == (0, "")
        assert controls(out) == []
        assert len(out.splitlines()) == 2 + len(journal)

        code, out, err = run("ls", "--db", db, "--json")
        assert (code, err, controls(out)) == (0, "", [])
        assert sorted(m["machine_id"] for m in json.loads(out)) == sorted([mid, names["id2"]])
        # a machine saved without a workflow name is listed by its definition id
        assert {m["workflow"] for m in json.loads(out)} == {names["workflow"], names["workflow2"]}

        code, out, err = run("show", "--db", db, "--json", "--", mid)
        assert (code, err, controls(out)) == (0, "", [])
        assert json.loads(out)["snapshot"] == snap.to_dict()

        code, out, err = run("history", "--db", db, "--json", "--", mid)
        assert (code, err, controls(out)) == (0, "", [])
        assert [e["data"] for e in json.loads(out)] == [dict(e.data) for e in journal]
        assert [e["kind"] for e in json.loads(out)] == [e.kind for e in journal]

        code, out, err = run("show", "--db", db, "--", names["id"] + "\x1b[2J-missing")
        assert code == 1 and out == ""
        assert controls(err) == [] and len(err.splitlines()) == 1


def test_an_event_named_clear_screen_does_not_clear_the_operators_screen(tmp_path: Path) -> None:
    """The installed command, as in the report: an event sent with type ESC [2J."""
    db = str(tmp_path / "x.db")
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSM_DB"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploysm", *args, "--db", db],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=False,
        )

    assert cli("migrate").returncode == 0
    for args in (("start", "wf\x1b[2J", "m\x1b[2J\rX"), ("send", "m\x1b[2J\rX", "\x1b[2J")):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and "\r" not in r.stdout
        assert "\\x1b[2J" in r.stdout
    r = cli("ls")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    assert "m\\x1b[2J\\rX  wf\\x1b[2J" in r.stdout
    r = cli("history", "m\x1b[2J\rX")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "m\\x1b[2J\\rX: 0 journal entries (times in UTC)\n"
