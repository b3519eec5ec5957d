"""The sender process of the PostgreSQL kill test (``test_pg_kill.py``).

::

    python pg_sender.py DSN SCHEMA LEDGER N_MACHINES SEED

Starts machines ``m000 .. m{N-1}`` of workflow ``pipeline`` on
``PostgresStore(DSN, schema=SCHEMA)`` and sends each its events ``START, NEXT, NEXT,
NEXT`` (``pg_worker.EVENTS_PER_MACHINE``), interleaved between machines in a seeded
random order and paced, so the sending goes on while the workers run; ``LANES`` tasks send at once,
each for its own machines. Every event
has an id (``MACHINE/INDEX``) and a payload ``{"n": N}``, ``N`` counting the events
sent, from 1. Some events are sent again later with the same id and payload on
purpose (``store.send`` must answer ``False``: ignored). Each send is recorded in
the ``sent`` table of the ``LEDGER`` schema (``duplicate``, ``accepted``) after it
returned. stdout gets one line at the end: ``sent EVENTS duplicates DUPS ignored
IGNORED``. Exit status 0.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from deploysm.stores._postgres import PostgresStore

EVENTS = ("START", "NEXT", "NEXT", "NEXT")
WORKFLOW = "pipeline"
WINDOW = 60  # machines started whose events are not all sent yet (in the schedule)
DUPLICATE_CHANCE = 0.12
LANES = 4  # concurrent senders, each with its own machines: a machine's sends stay in order
PACE_S = 0.001  # after each send of a lane: spreads the sending over a few seconds

# One operation of the schedule: start a machine, send an event, or send it again.
Op = tuple[str, str, str, str, int]  # (what, machine, event id, type, n)


def machine_ids(n: int) -> list[str]:
    return [f"m{i:03d}" for i in range(n)]


def schedule(n_machines: int, seed: int) -> list[Op]:
    """Every start and send in a seeded random order that keeps each machine's own
    operations in order (start first, then its events, a duplicate after the original);
    ``n`` numbers the events from 1 in this order."""
    rng = random.Random(seed)
    waiting = machine_ids(n_machines)
    waiting.reverse()
    open_: dict[str, int] = {}  # started machine -> index of its next event
    later: list[tuple[int, Op]] = []  # duplicates and when (in ops) to send them
    ops: list[Op] = []
    n = 0
    while waiting or open_ or later:
        due = [d for d in later if d[0] <= len(ops)]
        if due or (not waiting and not open_):
            d = min(due or later)
            later.remove(d)
            ops.append(d[1])
            continue
        if waiting and len(open_) < WINDOW and (not open_ or rng.random() < 0.3):
            mid = waiting.pop()
            ops.append(("start", mid, "", "", 0))
            open_[mid] = 0
        else:
            mid = rng.choice(sorted(open_))
        index = open_[mid]
        event_id = f"{mid}/{index}"
        n += 1
        ops.append(("send", mid, event_id, EVENTS[index], n))
        if rng.random() < DUPLICATE_CHANCE:
            later.append(
                (len(ops) + rng.randint(0, 60), ("again", mid, event_id, EVENTS[index], n))
            )
        if index + 1 == len(EVENTS):
            del open_[mid]
        else:
            open_[mid] = index + 1
    return ops


async def main(dsn: str, schema: str, ledger: str, n_machines: int, seed: int) -> int:
    ops = schedule(n_machines, seed)
    lanes: list[list[Op]] = [[] for _ in range(LANES)]
    for op in ops:
        lanes[int(op[1][1:]) % LANES].append(op)
    counts = {"send": 0, "again": 0, "ignored": 0}
    insert = sql.SQL(
        "INSERT INTO {}.sent (machine_id, event_id, type, n, duplicate, accepted)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
    ).format(sql.Identifier(ledger))
    async with PostgresStore(dsn, schema=schema, max_size=LANES) as store:

        async def lane(mine: list[Op]) -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for what, mid, event_id, type_, n in mine:
                    if what == "start":
                        await store.start(WORKFLOW, mid, {"machine_id": mid, "seen": []})
                        continue
                    event = {"type": type_, "payload": {"n": n}}
                    accepted = await store.send(mid, event, event_id)
                    await conn.execute(insert, (mid, event_id, type_, n, what == "again", accepted))
                    counts[what] += 1
                    if what == "send" and not accepted:
                        raise AssertionError(f"{event_id} was not accepted the first time")
                    if what == "again" and not accepted:
                        counts["ignored"] += 1
                    await asyncio.sleep(PACE_S)

        await asyncio.gather(*(lane(mine) for mine in lanes))
    print(
        f"sent {counts['send']} duplicates {counts['again']} ignored {counts['ignored']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(f"usage: {Path(sys.argv[0]).name} DSN SCHEMA LEDGER N_MACHINES SEED")
    _, dsn_arg, schema_arg, ledger_arg, n_arg, seed_arg = sys.argv
    sys.exit(asyncio.run(main(dsn_arg, schema_arg, ledger_arg, int(n_arg), int(seed_arg))))
