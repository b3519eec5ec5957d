"""A worker paused past its lease (SIGSTOP) is fenced out once another took over.

Worker A (``pg_worker.py --hold --audit``) runs machine ``zm`` of the pipeline
``idle -START-> build -NEXT-> deploy -NEXT-> verify -NEXT-> done`` (no scripted
failures); attempt 1 of ``deploy`` (non-idempotent, with a rollback) holds until the
test inserts the control row ``go/zm``. With A inside that effect, the test:

1. SIGSTOPs A and waits until its lease has expired (database clock);
2. starts worker B, which claims ``zm`` (the fencing token grows), resumes it (rolls
   the interrupted ``deploy`` attempt back, runs attempt 2) and completes it;
3. lets A's effect go on and SIGCONTs A: the effect completes late (its ``end`` row is
   in the ledger, after B's rows), and A tries to write: renewing the lease, or saving
   the commit of the attempt it ran;
4. waits until A has made a store write for ``zm`` after the resume, then SIGTERMs
   both workers (each exits 0).

Checks: every store write A attempted after the resume was refused (``--audit``
records each write with its token, wall-clock start and outcome) and A says so
(``lost the lease`` in its log, or a save refused with ``LEASE_LOST``); the journal
holds exactly the versions of the saves that succeeded, those after the takeover all
B's; the journal's record kinds and the machine's history are exactly the expected
ones; the events were applied once each, in order; ``deploy`` never started twice
without an ``undo`` in between; the committed ``deploy`` is B's attempt 2.

Needs ``DEPLOYSM_TEST_PG`` (skipped without it outside CI, a failure under CI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from pg_procs import HERE, Proc, pk, pw, q
from psycopg import sql

from deploysm.stores._postgres import PostgresStore

WORKER = HERE / "pg_worker.py"

MID = "zm"
ZOMBIE = "zombie-A"
RESCUER = "rescuer-B"
LEASE_MS = 500
POLL_MS = 100
TIMEOUT_S = 30.0  # each wait; the test takes a few seconds
STOP_TIMEOUT_S = 10.0
EVENTS = [("START", 1), ("NEXT", 2), ("NEXT", 3), ("NEXT", 4)]

# The journal of zm, record by record: A runs build and starts deploy, B takes over.
EXPECTED_JOURNAL = [
    "started",  # A
    "intent",  # A: idle -> build
    "committed",
    "intent",  # A: build -> deploy, attempt 1 (held, then A is paused)
    "resumed",  # B: the interrupted attempt ...
    "rollback",  # ... rolled back (non-idempotent)
    "attempt",  # B: attempt 2
    "committed",
    "intent",  # B: deploy -> verify
    "committed",
    "committed",  # B: verify -> done (no effect, no intent)
    "completed",
]


def spawn(name: str, extra: list[str], dsn: str, schema: str, tmp: Path) -> Proc:
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    fo, fe = out.open("w"), err.open("w")
    args = [
        sys.executable,
        str(WORKER),
        dsn,
        schema,
        schema,
        name,
        "--concurrency=2",
        f"--lease-ms={LEASE_MS}",
        f"--poll-ms={POLL_MS}",
        "--fail-percent=0",
        "--audit",
        *extra,
    ]
    popen = subprocess.Popen(args, stdout=fo, stderr=fe, text=True, env=dict(os.environ))
    return Proc(name, popen, out, err, [fo, fe])


def reap(procs: list[Proc]) -> None:
    for p in procs:
        if p.popen.poll() is None:
            if p.name == ZOMBIE:
                os.kill(p.popen.pid, signal.SIGCONT)  # a stopped process dies on SIGKILL too
            p.popen.kill()
    for p in procs:
        p.popen.wait()
        for f in p.files:
            f.close()


def wait_for(what: str, check: Callable[[], bool], procs: list[Proc]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        for p in procs:
            rc = p.popen.poll()
            if rc is not None:
                raise AssertionError(
                    f"{p.name} exited with {rc} while waiting for {what}\n"
                    f"stdout:\n{p.stdout()}\nstderr:\n{p.stderr()[-4000:]}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")
        time.sleep(0.02)


async def prepare(dsn: str, schema: str) -> None:
    async with PostgresStore(dsn, schema=schema, max_size=1) as store:
        await store.start(pw.WORKFLOW, MID, pw.new_context(MID))
        for i, (type_, n) in enumerate(EVENTS):
            assert await store.send(MID, {"type": type_, "payload": {"n": n}}, f"{MID}/{i}")


async def books(dsn: str, schema: str) -> tuple[Any, list[Any]]:
    async with PostgresStore(dsn, schema=schema, max_size=1) as store:
        return await store.load(MID), await store.journal(MID)


def test_paused_worker_is_fenced_out_after_a_takeover(tmp_path: Path) -> None:
    dsn = pk.pg_dsn()
    schema = pk.fresh_schema()
    procs: list[Proc] = []
    begun = time.monotonic()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for stmt in pw.ledger_ddl(schema):
                conn.execute(stmt)
            asyncio.run(prepare(dsn, schema))

            def ledger(worker: str, kind: str, step: str) -> list[Any]:
                return q(
                    conn,
                    "SELECT seq, attempt FROM {s}.ledger"
                    " WHERE worker = %s AND kind = %s AND step = %s AND machine_id = %s",
                    schema,
                    worker,
                    kind,
                    step,
                    MID,
                )

            def lease() -> tuple[str | None, int, bool, str]:
                row = q(
                    conn,
                    "SELECT lease_owner, fencing_token,"
                    " lease_expires_at IS NOT NULL AND lease_expires_at <= now(), status"
                    " FROM {s}.machines WHERE id = %s",
                    schema,
                    MID,
                )[0]
                return row[0], int(row[1]), bool(row[2]), row[3]

            # 1. A holds zm inside attempt 1 of deploy; pause it past its lease
            a = spawn(ZOMBIE, ["--hold"], dsn, schema, tmp_path)
            procs.append(a)
            wait_for("A to start deploy", lambda: bool(ledger(ZOMBIE, "start", "deploy")), procs)
            os.kill(a.popen.pid, signal.SIGSTOP)
            stopped_at = time.time()
            owner, token_a, _, _ = lease()
            assert owner == ZOMBIE
            wait_for("A's lease to expire", lambda: lease()[2], procs)
            assert lease()[:2] == (ZOMBIE, token_a), "nobody may touch the lease yet"

            # 2. B takes zm over and completes it
            b = spawn(RESCUER, [], dsn, schema, tmp_path)
            procs.append(b)
            wait_for("B to complete zm", lambda: lease()[3] == "completed", procs)
            (token_b,) = q(
                conn,
                "SELECT max(token) FROM {s}.writes WHERE op = 'claim' AND worker = %s",
                schema,
                RESCUER,
            )[0]
            assert token_b is not None and token_b > token_a, (token_a, token_b)
            assert lease()[1] == token_b

            # 3. A's effect may finish; A resumes
            conn.execute(
                sql.SQL("INSERT INTO {}.control (name) VALUES (%s)").format(sql.Identifier(schema)),
                (f"go/{MID}",),
            )
            resumed_at = time.time()
            os.kill(a.popen.pid, signal.SIGCONT)

            def late_writes() -> list[Any]:
                return q(
                    conn,
                    "SELECT op, token, ok, code, detail FROM {s}.writes"
                    " WHERE worker = %s AND machine_id = %s AND started > %s ORDER BY seq",
                    schema,
                    ZOMBIE,
                    MID,
                    resumed_at,
                )

            def a_told() -> bool:
                refused_save = any(w[0] == "save" and w[3] == "LEASE_LOST" for w in late_writes())
                return refused_save or f"lost the lease of {MID}" in a.stderr()

            # 4. A's late effect and its refused writes
            wait_for("A's late deploy end", lambda: bool(ledger(ZOMBIE, "end", "deploy")), procs)
            wait_for("A to write after the resume", lambda: bool(late_writes()), procs)
            wait_for("A to learn it lost the lease", a_told, procs)

            for p in procs:
                p.popen.send_signal(signal.SIGTERM)
            for p in procs:
                rc = p.popen.wait(timeout=STOP_TIMEOUT_S)
                assert rc == 0, f"{p.name} exited with {rc}\n{p.stderr()[-4000:]}"
                assert f"stopped {p.name}" in p.stdout(), p.stdout()

            attempted = late_writes()
            writes = q(
                conn,
                "SELECT worker, op, token, started, ok, code, detail FROM {s}.writes"
                " WHERE machine_id = %s ORDER BY seq",
                schema,
                MID,
            )
            rows = q(
                conn,
                "SELECT seq, kind, step, attempt, worker FROM {s}.ledger"
                " WHERE machine_id = %s ORDER BY seq",
                schema,
                MID,
            )
            inbox = q(conn, "SELECT count(*), count(delivered_at) FROM {s}.inbox", schema)
            final_token = lease()[1]

        snap, journal = asyncio.run(books(dsn, schema))
        context = (
            f"\nwrites:\n{_table(writes)}\nledger:\n{_table(rows)}\njournal:\n"
            + "\n".join(f"  v{e.version} {e.kind} {dict(e.data)}" for e in journal)
            + f"\nA stderr:\n{a.stderr()[-3000:]}"
        )

        # every write A attempted after the resume was refused, and A knows it
        assert attempted, "A attempted no write after the resume" + context
        accepted = [w for w in attempted if w[2]]
        assert not accepted, f"writes of the paused worker went through: {accepted}" + context
        assert all(w[1] == token_a for w in attempted), context
        saves_refused = [w for w in attempted if w[0] == "save"]
        assert all(w[3] == "LEASE_LOST" for w in saves_refused), context
        said_lost = f"lost the lease of {MID}" in a.stderr()
        assert said_lost or saves_refused, context
        assert final_token == token_b, context

        # the journal holds exactly the successful saves; after the takeover, only B's
        saved = {int(w[6].split()[0][1:]): w for w in writes if w[1] == "save" and w[4]}
        assert {e.version for e in journal} == set(saved), context
        last_a = max(v for v, w in saved.items() if w[0] == ZOMBIE)
        after = [w for v, w in saved.items() if v > last_a]
        assert after and all(w[0] == RESCUER and w[2] == token_b for w in after), context
        assert all(w[3] < stopped_at for w in saved.values() if w[0] == ZOMBIE), context
        assert [e.kind for e in journal] == EXPECTED_JOURNAL, context
        assert journal[0].data.get("worker") == ZOMBIE, context

        # the machine: history exact, each event once, in order
        assert snap is not None and snap.status == "completed", context
        assert [s.name for s in snap.history] == ["idle", *pw.STEPS], context
        assert snap.current_state.name == "done" and snap.in_flight is None, context
        assert snap.version == journal[-1].version, context
        assert snap.context["seen"] == [n for _, n in EVENTS], context
        entered = [*snap.history[1:], snap.current_state]
        assert [s.data["payload"]["n"] for s in entered] == [n for _, n in EVENTS], context
        committed = [e for e in journal if e.kind == "committed"]
        assert [(e.data["to"], e.data["attempts"]) for e in committed] == [
            ("build", 1),
            ("deploy", 2),
            ("verify", 1),
            ("done", 0),
        ], context
        assert inbox == [(4, 4)], context

        # the ledger: A's deploy attempt 1 rolled back by B before B's attempt 2; A's
        # effect finished late (the paused process ran on), but wrote nothing to the store
        by_step = {step: [(r[1], r[4], r[3]) for r in rows if r[2] == step] for step in pw.STEPS}
        assert by_step == {
            "build": [("start", ZOMBIE, 1), ("end", ZOMBIE, 1)],
            "deploy": [
                ("start", ZOMBIE, 1),
                ("undo", RESCUER, 1),
                ("start", RESCUER, 2),
                ("end", RESCUER, 2),
                ("end", ZOMBIE, 1),
            ],
            "verify": [("start", RESCUER, 1), ("end", RESCUER, 1)],
        }, context
        open_start = None
        for kind, worker, attempt in by_step["deploy"]:
            if kind == "start":
                assert open_start is None, f"deploy started twice without an undo{context}"
                open_start = (worker, attempt)
            elif kind == "undo":
                open_start = None

        outcomes = ", ".join(f"{w[0]}:{w[3] or 'lost'}" for w in attempted)
        print(
            f"\npg zombie test: lease {LEASE_MS} ms; A (token {token_a}) paused in deploy "
            f"attempt 1, B claimed (token {token_b}), rolled back, completed; A resumed: "
            f"late deploy end in the ledger, {len(attempted)} store write(s) attempted, all "
            f"refused ({outcomes}); "
            f"A logged 'lost the lease': {said_lost}; journal {len(journal)} records, "
            f"v{snap.version}; {time.monotonic() - begun:.1f} s"
        )
    finally:
        reap(procs)
        asyncio.run(pk.drop_schema(dsn, schema))


def _table(rows: list[Any]) -> str:
    return "\n".join(f"  {r}" for r in rows)
