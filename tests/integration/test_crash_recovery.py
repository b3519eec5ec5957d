"""Crash test: SIGKILL a worker process at random moments, restart it, check the books.

``crash_worker.py`` runs several machines of a 5-step pipeline (idempotent steps, a
non-idempotent step with a rollback, one without) on a ``SQLiteStore``; each effect
writes ``start`` / ``end`` / ``fail`` (and each rollback ``undo``) to a separate,
durable ledger database. This test kills the worker with SIGKILL after a random
delay (seeded), restarts it each time, and between runs acts as the operator for
parked machines (``needs_attention``): it looks in the ledger whether the
interrupted attempt took effect and resolves with ``mark_succeeded`` or ``retry``,
writing ``resolve`` to the ledger first. It goes on until every machine is done;
if they all are before ``MIN_KILLS`` kills, a new wave of ``N_MACHINES`` machines
joins (the worker is restarted with a larger N), so the kill count never depends
on how fast this host is; after ``MAX_KILLS`` kills the runs go on unkilled.

At the end, for every machine:

* the stored snapshot is ``completed`` at ``done`` with history exactly
  ``idle, step1 .. step5`` (no lost or skipped transition);
* a non-idempotent step never started twice without an ``undo`` or an operator
  ``resolve`` in between (step4, which has no rollback, may also start again after
  a clean ``fail``, but only as a new transition: with a new idempotency key);
* the attempt the snapshot committed for each step has an ``end`` in the ledger;
  for the non-idempotent steps it is the *only* ``end`` not undone;
* the journal agrees with the snapshot: its ``committed`` records are the history's
  transitions with the same idempotency keys, its versions never go down, and its
  last version is the snapshot's.

Only the kill timing is random; every check is deterministic.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploysm import create_state_machine
from deploysm.stores import JournalEntry, SQLiteStore

WORKER = Path(__file__).resolve().parent / "crash_worker.py"
_spec = importlib.util.spec_from_file_location("crash_worker", WORKER)
assert _spec is not None and _spec.loader is not None
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

SEED = 20240611
N_MACHINES = 8  # per wave: all of a wave's machines run at once
MIN_KILLS = 30
MAX_KILLS = 60  # then the runs go on unkilled: bounds the runtime on a slow host
KILL_AFTER_READY_MS = (20.0, 150.0)  # most kills: this long after the worker says "ready"
EARLY_KILL_CHANCE = 0.15  # some kills: counted from the spawn, may land during start-up
EARLY_KILL_MS = (0.0, 150.0)
MAX_RUNS = 200
RUN_TIMEOUT_S = 60.0
STEPS: tuple[str, ...] = cw.STEPS
NON_IDEMPOTENT: tuple[str, ...] = cw.NON_IDEMPOTENT


@dataclass
class Campaign:
    machines: int = N_MACHINES  # the worker runs m0 .. m{machines - 1}
    waves: int = 1
    kills: int = 0
    runs: int = 0
    mid_effect_kills: int = 0  # kills that left at least one effect started, not ended
    cut_effects: Counter[str] = field(default_factory=Counter)  # by step: start, no end
    early_kills: int = 0
    resolutions: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


def _cut_effects(ledger: Path, after_seq: int) -> Counter[str]:
    """The steps whose effect a kill cut short: per machine, the last ledger row
    written by the killed run is a ``start`` (no ``end``, ``fail`` or ``undo`` after)."""
    last: dict[str, tuple[str, str]] = {}
    for seq, kind, mid, step, *_ in cw.ledger_rows(ledger):
        if seq > after_seq and kind in ("start", "end", "fail", "undo"):
            last[mid] = (kind, step)
    return Counter(step for kind, step in last.values() if kind == "start")


def _max_seq(ledger: Path) -> int:
    rows = cw.ledger_rows(ledger)
    return int(rows[-1][0]) if rows else 0


def _run_worker(
    db: Path, ledger: Path, tmp: Path, c: Campaign, rng: random.Random, kill: bool
) -> None:
    """One run of the worker, killed at a random moment when ``kill``."""
    c.runs += 1
    err_path = tmp / f"stderr-{c.runs}.txt"
    before = _max_seq(ledger)
    args = [sys.executable, str(WORKER), str(db), str(ledger), str(c.machines), str(SEED)]
    with (
        err_path.open("w") as err,
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True) as proc,
    ):
        assert proc.stdout is not None
        if kill:
            if rng.random() < EARLY_KILL_CHANCE:
                c.early_kills += 1
                time.sleep(rng.uniform(*EARLY_KILL_MS) / 1000.0)
            else:
                delay = rng.uniform(*KILL_AFTER_READY_MS) / 1000.0
                ready, _, _ = select.select([proc.stdout], [], [], RUN_TIMEOUT_S)
                line = proc.stdout.readline() if ready else ""
                if line == "ready\n":
                    time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"run {c.runs}: the worker hung") from None
        out = proc.stdout.read()
    stderr = err_path.read_text()
    if rc == -signal.SIGKILL:  # else it finished before the signal came
        c.kills += 1
        cut = _cut_effects(ledger, before)
        c.cut_effects += cut
        c.mid_effect_kills += 1 if cut else 0
    else:
        assert rc == 0, f"run {c.runs}: worker exited with {rc}\nstdout:\n{out}\nstderr:\n{stderr}"
        finished = [ln for ln in out.splitlines() if ln.split(" ")[0] in ("done", "parked")]
        assert len(finished) == c.machines, f"run {c.runs}: one line per machine, got:\n{out}"
    assert stderr == "", f"run {c.runs}: the worker wrote to stderr:\n{stderr}"


async def _operate(db: Path, ledger: Path, c: Campaign) -> list[str]:
    """Resolve every parked machine as an operator would; the ids still unfinished."""
    async with SQLiteStore(db) as store:
        config = cw.pipeline_config(store, ledger, SEED)
        for info in await store.list("needs_attention"):
            mid = info.machine_id
            sm = create_state_machine(config, cw.new_context(mid), machine_id=mid)
            assert await sm.resume() is None
            assert sm.status == "needs_attention"
            flight = sm.snapshot().in_flight
            if flight is None or flight.to_state != "step4":
                c.problems.append(f"{mid} parked outside step4: {sm.snapshot().to_dict()}")
                continue
            key = flight.idempotency_key
            rows = cw.ledger_rows(ledger)
            took_effect = any(r[1] == "end" and r[2] == mid and r[4] == key for r in rows)
            action = "mark_succeeded" if took_effect else "retry"
            cw.record(ledger, "resolve", mid, "step4", key, flight.attempt, action)
            c.resolutions[action] += 1
            await sm.resolve(action, by="crash-test", reason="checked the ledger")
            if sm.status not in ("active", "completed"):
                c.problems.append(f"{mid} is {sm.status} after resolve({action!r})")
        status = {info.machine_id: info.status for info in await store.list()}
        return [mid for mid in _ids(c) if status.get(mid) != "completed"]


async def _stored(db: Path, ids: list[str]) -> dict[str, tuple[Any, list[JournalEntry]]]:
    async with SQLiteStore(db) as store:
        return {mid: (await store.load(mid), await store.journal(mid)) for mid in ids}


def _ids(c: Campaign) -> list[str]:
    return [f"m{i}" for i in range(c.machines)]


# ---------------------------------------------------------------------------- checks


def _ledger_excerpt(rows: list[tuple[Any, ...]], mid: str, step: str | None = None) -> str:
    sel = [r for r in rows if r[2] == mid and (step is None or r[3] == step)]
    return "\n".join(f"    {r}" for r in sel)


def _journal_excerpt(journal: list[JournalEntry]) -> str:
    return "\n".join(f"    v{e.version} {e.kind} {dict(e.data)}" for e in journal)


def _check_machine(
    mid: str, snap: Any, journal: list[JournalEntry], rows: list[tuple[Any, ...]]
) -> list[str]:
    problems: list[str] = []

    def bad(what: str, step: str | None = None) -> None:
        problems.append(
            f"{mid}: {what}\n  ledger:\n{_ledger_excerpt(rows, mid, step)}\n"
            f"  journal:\n{_journal_excerpt(journal)}"
        )

    if snap is None:
        bad("never stored")
        return problems
    # every machine finished, no transition lost or skipped
    names = [s.name for s in snap.history]
    if snap.status != "completed" or snap.current_state.name != "done":
        bad(f"is {snap.status} at {snap.current_state.name}")
    if snap.in_flight is not None:
        bad(f"still has a transition in flight: {snap.in_flight}")
    if names != ["idle", *STEPS]:
        bad(f"history is {names}")
    entered = [*snap.history[1:], snap.current_state]
    # the journal agrees with the snapshot
    committed = [e for e in journal if e.kind == "committed"]
    pairs = [(e.data["source"], e.data["to"]) for e in committed]
    expected_pairs = list(zip(names, [*names[1:], snap.current_state.name], strict=True))
    if pairs != expected_pairs:
        bad(f"journal commits {pairs}, snapshot history gives {expected_pairs}")
    keys = [(e.data.get("key"), e.data.get("attempts"), e.version) for e in committed]
    states = [(s.idempotency_key, s.attempts, s.version) for s in entered]
    if keys != states:
        bad(f"journal commits (key, attempts, version) {keys} != snapshot's {states}")
    versions = [e.version for e in journal]
    if versions != sorted(versions):
        bad(f"journal versions go down: {versions}")
    if not journal or journal[-1].version != snap.version:
        last = journal[-1].version if journal else None
        bad(f"last journal version {last} != snapshot version {snap.version}")
    # the ledger: what the effects really did
    for state in entered[:-1]:  # the states step1 .. step5 (done has no effect)
        step, key, attempt = state.name, state.idempotency_key, state.attempts
        mine = [r for r in rows if r[2] == mid and r[3] == step]
        ends = [(r[4], r[5]) for r in mine if r[1] == "end"]
        if (key, attempt) not in ends:
            bad(f"{step} committed attempt {attempt} of {key}, the ledger has no end for it", step)
        if step not in NON_IDEMPOTENT:
            continue
        # A non-idempotent step starts again only once the earlier start is undone
        # (rollback) or resolved by the operator; after a clean ``fail`` of step4 (no
        # rollback) only a new logical transition (a new key) may start it again.
        open_start: tuple[Any, ...] | None = None
        failed_key: str | None = None
        for r in mine:
            if r[1] == "start":
                if open_start is not None and (failed_key is None or r[4] == failed_key):
                    bad(f"{step} started again (row {r[0]}) after row {open_start[0]}", step)
                open_start, failed_key = r, None
            elif r[1] in ("undo", "resolve"):
                open_start, failed_key = None, None
            elif r[1] == "fail" and step == "step4":
                failed_key = r[4]
        effective = [
            (r[4], r[5])
            for i, r in enumerate(mine)
            if r[1] == "end"
            and not any(u[1] == "undo" and (u[4], u[5]) == (r[4], r[5]) for u in mine[i + 1 :])
        ]
        if effective != [(key, attempt)]:
            bad(f"{step} took effect as {effective}, committed ({key}, {attempt})", step)
    return problems


# ---------------------------------------------------------------------------- the test


def test_sigkill_restart_loop_keeps_the_books(tmp_path: Path) -> None:
    # The scripted failures (a pure function of the seed) include some at step3 and
    # step4, so rollbacks and a redispatch after a clean failure really happen.
    first_wave = [f"m{i}" for i in range(N_MACHINES)]
    assert any(cw.fails(SEED, mid, "step3", 1) for mid in first_wave)
    assert any(cw.fails(SEED, mid, "step4", 1) for mid in first_wave)
    db, ledger = tmp_path / "store.db", tmp_path / "ledger.db"
    cw.init_ledger(ledger)
    rng = random.Random(SEED)
    c = Campaign()
    started = time.monotonic()
    while True:
        assert c.runs < MAX_RUNS, f"not finished after {c.runs} runs"
        _run_worker(db, ledger, tmp_path, c, rng, kill=c.kills < MAX_KILLS)
        unfinished = asyncio.run(_operate(db, ledger, c))
        assert not c.problems, "\n".join(c.problems)
        if not unfinished:
            if c.kills >= MIN_KILLS:
                break
            c.machines += N_MACHINES  # too few kills yet: a new wave of machines
            c.waves += 1
    elapsed = time.monotonic() - started

    ids = _ids(c)
    stored = asyncio.run(_stored(db, ids))
    rows = cw.ledger_rows(ledger)
    problems = [p for mid in ids for p in _check_machine(mid, *stored[mid], rows)]
    assert not problems, "\n".join(problems)
    kinds = Counter(e.kind for _, journal in stored.values() for e in journal)
    assert kinds["rollback"] > 0 and kinds["attempt_failed"] > 0
    resolved = sum(c.resolutions.values())
    assert kinds["needs_attention"] == kinds["resolved"] == resolved
    assert sum(1 for r in rows if r[1] == "resolve") == resolved
    assert c.kills >= MIN_KILLS
    cut = ", ".join(f"{k} {v}" for k, v in sorted(c.cut_effects.items()))
    print(
        f"\ncrash test: {c.kills} kills ({c.early_kills} early, {c.mid_effect_kills} mid-effect; "
        f"effects cut short: {c.cut_effects.total()} [{cut}]), {c.runs - 1} restarts, "
        f"{resolved} parked/resolved {dict(c.resolutions)}, "
        f"resumed {kinds['resumed']}, rollbacks {kinds['rollback']}, "
        f"failed attempts {kinds['attempt_failed']}; {c.machines} machines in {c.waves} "
        f"waves, {len(rows)} ledger rows, {elapsed:.1f} s"
    )
