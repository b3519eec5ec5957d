"""Peer: DBOS Transact doing the B2 durable pipeline (one DBOS step = one durable transition).

Method: one DBOS workflow per machine, ``--steps`` (9) steps per workflow, each step a trivial
async function incrementing an in-process counter. Workflows and steps are ``async def``
(``@DBOS.workflow()``, ``@DBOS.step()``), started with ``await DBOS.start_workflow_async`` and
awaited with ``handle.get_result()``: in ``sequential`` mode one after another, in
``concurrent`` mode all started at once, then all awaited. DBOS runs with its default
durability and pool settings (the SQLite system database in its default rollback journal and
``synchronous``; PostgreSQL with ``synchronous_commit`` as the server has it); only its log
level is raised to WARNING. DBOS 3.4.0 has no admin server; OTLP and Conductor are off by
default and left off. System database: a fresh SQLite file (``--db sqlite`` for a temporary
one, or ``sqlite:///path`` to a file that does not yet exist) or, for a ``postgresql://`` URL,
a fresh database ``dbos_bench_<random>`` on that server, dropped afterwards. Each run is its
own process (DBOS is a process-wide singleton); only the workflow runs are timed, after
``DBOS.launch()``. Before printing, the run checks the counter equals workflows*steps and that
the system database holds one SUCCESS ``workflow_status`` row per workflow and one
``operation_outputs`` row per step.

    python benchmarks/peer_dbos.py --db sqlite --workflows 20 --mode sequential --json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def _counts(url: str, prefix: str) -> tuple[int, int]:
    """(SUCCESS workflow_status rows, operation_outputs rows) of this run's workflows."""
    like = prefix + "%"
    queries = (
        "SELECT count(*) FROM {s}workflow_status WHERE status = 'SUCCESS' AND workflow_uuid LIKE ",
        "SELECT count(*) FROM {s}operation_outputs WHERE workflow_uuid LIKE ",
    )
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return tuple(conn.execute(q.format(s="") + "?", (like,)).fetchone()[0] for q in queries)
        finally:
            conn.close()
    with psycopg.connect(url) as conn:
        return tuple(
            conn.execute(q.format(s="dbos.") + "%s", (like,)).fetchone()[0] for q in queries
        )


async def _run(sys_url: str, workflows: int, steps: int, mode: str) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    counter = [0]

    @DBOS.step()
    async def bump() -> None:
        counter[0] += 1

    @DBOS.workflow()
    async def pipeline(n: int) -> int:
        for _ in range(n):
            await bump()
        return n

    config: DBOSConfig = {
        "name": "deploysm-peer",
        "system_database_url": sys_url,
        "log_level": "WARNING",
    }
    t_setup = time.perf_counter()
    DBOS(config=config)
    DBOS.launch()
    launch_s = time.perf_counter() - t_setup
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"

    async def start(i: int) -> Any:
        with SetWorkflowID(f"{prefix}{i}"):
            return await DBOS.start_workflow_async(pipeline, steps)

    try:
        t0 = time.perf_counter()
        if mode == "sequential":
            results = [await (await start(i)).get_result() for i in range(workflows)]
        else:
            handles = await asyncio.gather(*(start(i) for i in range(workflows)))
            results = await asyncio.gather(*(h.get_result() for h in handles))
        elapsed = time.perf_counter() - t0
    finally:
        DBOS.destroy(destroy_registry=True)
    total = workflows * steps
    done, ops = _counts(sys_url, prefix)
    if counter[0] != total or results != [steps] * workflows or done != workflows or ops != total:
        raise SystemExit(
            f"work check failed: counter={counter[0]} results_ok={results == [steps] * workflows}"
            f" success_rows={done} step_rows={ops}; expected {workflows} workflows, {total} steps"
        )
    return {
        "steps_per_s": total / elapsed,
        "steps": total,
        "workflows": workflows,
        "elapsed_s": elapsed,
        "launch_s": launch_s,
        "dbos": importlib.metadata.version("dbos"),
    }


def child(db: str, workflows: int, steps: int, mode: str) -> dict[str, Any]:
    if db.startswith("postgres"):
        name = f"dbos_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        sys_url = make_url(db).set(database=name).render_as_string(hide_password=False)
        try:
            return asyncio.run(_run(sys_url, workflows, steps, mode))
        finally:
            with psycopg.connect(db, autocommit=True) as admin:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(name)))
    if db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="dbos_bench_") as tmp:
            return asyncio.run(_run(f"sqlite:///{tmp}/sys.sqlite", workflows, steps, mode))
    if not db.startswith("sqlite:///") or Path(db.removeprefix("sqlite:///")).exists():
        raise SystemExit(f"--db must be 'sqlite', a new sqlite:///file or postgresql://: {db}")
    return asyncio.run(_run(db, workflows, steps, mode))


def run_dbos(
    db_url: str, workflows: int, steps: int, mode: str, timeout: float = 600
) -> dict[str, Any]:
    """Run one measurement in a child process; adds ``child_s`` (its wall time, with startup)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--db", db_url, "--workflows"]
    cmd += [str(workflows), "--steps", str(steps), "--mode", mode, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    child_s = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peer_dbos child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "child_s": child_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite", help="'sqlite', sqlite:///new-file or postgresql://")
    p.add_argument("--workflows", type=int, default=20)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--mode", choices=["sequential", "concurrent"], default="sequential")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()
    out = child(args.db, args.workflows, args.steps, args.mode)
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        print(
            f"DBOS {out['dbos']} {args.mode}: {out['steps_per_s']:,.0f} steps/s "
            f"({out['steps']} steps in {out['elapsed_s']:.2f} s, launch {out['launch_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
