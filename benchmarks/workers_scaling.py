"""B4: throughput with 1, 2 and 4 worker processes sharing one PostgreSQL store.

Workload: ``--machines`` machines (300) of a 5-state pipeline (s0 -> ... -> s4, final;
4 transitions on ``NEXT``), each effect ``await asyncio.sleep(--sleep-ms)`` (5 ms),
idempotent. Every machine is started and all its events are sent before the
workers start. Each worker is a process (this script with ``--role worker``: a
``Worker`` with ``--concurrency`` 16 over its own ``PostgresStore``), in a fresh schema
for each measurement, ANALYZEd once prepared. The workers start, open their stores
and say they are ready; the clock starts when they are all told to go and stops when
every machine is completed (this process polls the machine count every 10 ms).
Checked before printing: every machine completed, and the effect calls the workers
report and the ``committed`` journal rows both equal machines x 4. Also shown: how
busy the host's CPUs were during the run (``/proc/stat``, every process on the host)
and the workers' own CPU time, since PostgreSQL, the workers and this process share
the host. Worker counts alternate order between rounds; medians are printed.

    python benchmarks/workers_scaling.py [--pg URL] [--machines 300] [--sleep-ms 5]
                                    [--workers 1,2,4] [--concurrency 16] [--rounds 2]

``--pg`` defaults to $DEPLOYSM_TEST_PG; without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import deploysm
from deploysm import Worker
from deploysm.stores import PostgresStore

STATES = [f"s{i}" for i in range(5)]
STEPS = len(STATES) - 1
SCRIPT = os.path.abspath(__file__)
READY_TIMEOUT_S = 60.0


# ------------------------------------------------------------------ worker process


def make_pipeline(sleep_s: float, calls: list[int]) -> Any:
    def factory() -> deploysm.StateMachineConfig[str, str, dict]:
        async def step(ctx: dict, state: deploysm.State[str]) -> None:
            await asyncio.sleep(sleep_s)
            calls[0] += 1

        eff = deploysm.effect().execute(step).set_idempotent(True).build()
        return deploysm.StateMachineConfig(
            id="pipeline",
            initial_state=STATES[0],
            states=STATES,
            events=["NEXT"],
            transitions=[
                deploysm.Transition(STATES[i], STATES[i + 1], "NEXT") for i in range(STEPS)
            ],
            effects=dict.fromkeys(STATES[1:], eff),
        )

    return factory


async def serve_worker(args: argparse.Namespace) -> None:
    """Open the store, print ``R``, wait for a line on stdin, run until SIGTERM, then
    print ``C <effect calls> <machine runs> <cpu seconds>``."""
    calls = [0]
    store = PostgresStore(args.pg, schema=args.schema)
    await store.open()
    await store.wait_for_work(0)  # connect the LISTEN connection before the clock starts
    worker = Worker(
        store,
        {args.workflow: make_pipeline(args.sleep_ms / 1000, calls)},
        concurrency=args.concurrency,
    )
    print("R", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        await worker.run()
    finally:
        await store.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"C {calls[0]} {worker.processed} {usage.ru_utime + usage.ru_stime:.3f}", flush=True)


# ------------------------------------------------------------------ the measuring side


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat (0, 0 where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


async def prepare(dsn: str, schema: str, workflow: str, machines: int) -> None:
    """Start the machines and send all their events (8 at a time), then ANALYZE."""
    async with PostgresStore(dsn, schema=schema) as store:

        async def one(i: int) -> None:
            mid = f"{workflow}-{i:04d}"
            await store.start(workflow, mid, {"service": "api", "n": i})
            for step in range(STEPS):
                await store.send(mid, "NEXT", event_id=f"next-{step}")

        todo = list(range(machines))
        await asyncio.gather(*(asyncio.gather(*map(one, todo[k::8])) for k in range(8)))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for table in ("machines", "inbox", "journal"):
            await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))


async def completed(conn: psycopg.AsyncConnection, schema: str, workflow: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE workflow = %s AND status = 'completed'").format(
        sql.Identifier(schema, "machines")
    )
    cur = await conn.execute(query, (workflow,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def run_workers(
    args: argparse.Namespace, schema: str, count: int, tag: str
) -> dict[str, Any]:
    workflow = f"w{tag}"
    await prepare(args.pg, schema, workflow, args.machines)
    argv = [
        "--role", "worker", "--pg", args.pg, "--schema", schema, "--workflow", workflow,
        "--sleep-ms", str(args.sleep_ms), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    t_spawn = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"R":
                raise SystemExit(f"worker did not start: {line!r}")
        startup = time.perf_counter() - t_spawn
        async with await psycopg.AsyncConnection.connect(args.pg, autocommit=True) as conn:
            busy0, total0 = cpu_ticks()
            t0 = time.perf_counter()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
                await p.stdin.drain()
            while await completed(conn, schema, workflow) < args.machines:
                if time.perf_counter() - t0 > args.timeout:
                    raise SystemExit(f"not done after {args.timeout} s")
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            busy1, total1 = cpu_ticks()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            reports = []
            for p in procs:
                assert p.stdout is not None
                out = (await asyncio.wait_for(p.stdout.read(), 30)).decode().split()
                await p.wait()
                if not out or out[0] != "C":
                    raise SystemExit(f"worker exited without its report: {out}")
                reports.append((int(out[1]), int(out[2]), float(out[3])))
            journal = sql.SQL(
                "SELECT count(*) FROM {} j JOIN {} m ON m.id = j.machine_id"
                " WHERE m.workflow = %s AND j.kind = 'committed'"
            ).format(sql.Identifier(schema, "journal"), sql.Identifier(schema, "machines"))
            cur = await conn.execute(journal, (workflow,))
            row = await cur.fetchone()
            committed = int(row[0]) if row else 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    effects = sum(r[0] for r in reports)
    expected = args.machines * STEPS
    if effects != expected or committed != expected:
        raise SystemExit(f"{count} workers: {effects} effects, {committed} commits, not {expected}")
    return {
        "elapsed": elapsed,
        "startup": startup,
        "cpu_busy": (busy1 - busy0) / max(1, total1 - total0),
        "host_cpu": (busy1 - busy0) / (os.sysconf("SC_CLK_TCK") or 100),
        "worker_cpu": sum(r[2] for r in reports),
        "runs": [r[1] for r in reports],
    }


async def server_info(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit')"
        )
        version, sync_commit = await cur.fetchone() or ("?", "?")
    return f"postgresql {version} (synchronous_commit={sync_commit})"


async def bench(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.workers.split(",")]
    run_id = uuid.uuid4().hex[:10]
    info = await server_info(args.pg)
    results: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    for r in range(args.rounds):
        for c in counts if r % 2 == 0 else counts[::-1]:
            schema = f"bench_b4_{run_id}_{r}_{c}"  # a fresh schema for each measurement
            try:
                results[c].append(await run_workers(args, schema, c, f"{r}x{c}"))
            finally:
                async with await psycopg.AsyncConnection.connect(args.pg, autocommit=True) as conn:
                    await conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
    transitions = args.machines * STEPS
    print(
        f"B4 worker scaling on PostgreSQL: {args.machines} machines x {STEPS} transitions, "
        f"{args.sleep_ms} ms sleep per effect, concurrency {args.concurrency} per worker, "
        f"median of {args.rounds}"
    )
    print(f"python {platform.python_version()}, {info}, {os.cpu_count()} cpus")
    head = [
        "workers",
        "seconds",
        "machines/s",
        "transitions/s",
        "speedup",
        "host busy",
        "worker cpu s",
        "other cpu s",
    ]
    print(f"{head[0]:<8}" + "".join(f"{h:>14}" for h in head[1:]) + "   runs per worker")
    base = None
    for c in counts:
        runs = results[c]
        elapsed = statistics.median(x["elapsed"] for x in runs)
        base = base or elapsed
        cols = [
            f"{elapsed:.2f}",
            f"{args.machines / elapsed:,.0f}",
            f"{transitions / elapsed:,.0f}",
            f"{base / elapsed:.2f}",
            f"{statistics.median(x['cpu_busy'] for x in runs):.0%}",
            f"{statistics.median(x['worker_cpu'] for x in runs):.1f}",
            f"{statistics.median(x['host_cpu'] - x['worker_cpu'] for x in runs):.1f}",
        ]
        print(f"{c:<8}" + "".join(f"{v:>14}" for v in cols) + f"   {runs[-1]['runs']}")
    print(
        "host busy: all the host's CPUs over the run (/proc/stat); other cpu s: the host's busy "
        "CPU seconds minus the workers' (PostgreSQL, this process, anything else running)"
    )
    print(
        "seconds: from 'go' to all completed (process start and store open before it: "
        + ", ".join(
            f"{c}: {statistics.median(x['startup'] for x in results[c]):.1f} s" for c in counts
        )
        + ")"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pg", default=os.environ.get("DEPLOYSM_TEST_PG"), metavar="URL")
    p.add_argument("--machines", type=int, default=300)
    p.add_argument("--sleep-ms", type=float, default=5.0, help="each effect's asyncio.sleep")
    p.add_argument("--workers", default="1,2,4", help="worker process counts to compare")
    p.add_argument("--concurrency", type=int, default=16, help="machines at once per worker")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many s")
    p.add_argument("--role", choices=["bench", "worker"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--schema", help=argparse.SUPPRESS)
    p.add_argument("--workflow", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "worker":
        asyncio.run(serve_worker(args))
    elif not args.pg:
        print("workers_scaling: no PostgreSQL server given (--pg URL or DEPLOYSM_TEST_PG); skipped")
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
