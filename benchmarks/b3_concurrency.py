"""B3: 10,000 concurrent machines, 5 states each, a 10 ms sleep per effect.

**Workload.** A 5-state pipeline (`s0 -> s1 -> s2 -> s3 -> s4` on the events `E1`..`E4`,
`s4` final), every transition awaiting one async callback that sleeps 10 ms and counts
its call. 10,000 machines run at once: one `asyncio.gather` of 10,000 coroutines, each
building its machine and dispatching its 4 events in order. Per system:

- deploysm in memory: one shared `StateMachineConfig` with `final_states=["s4"]`, the
  effect awaits `deploysm.sleep(0.01)`;
- deploysm on SQLite: the same with `store=SQLiteStore(path)` (temp file, WAL,
  `synchronous=FULL`), opened with `async with` before the clock starts;
- `transitions` `AsyncMachine`, one shared machine and `add_model` per machine (faster
  here than one machine per model), an async `on_enter` callback awaiting
  `asyncio.sleep(0.01)`;
- `python-statemachine` `StateChart`, one instance per machine, async `on_E1`..`on_E4`
  transition actions awaiting `asyncio.sleep(0.01)`;
- the floor: bare asyncio tasks, each doing 4 x (dict lookup + `await asyncio.sleep(0.01)`).

**Method.** Each system runs in a fresh child process (this script with `--system`),
so no system inherits another's heap. The child builds the definition, reads its RSS
(`/proc/self/statm`), then times the `gather` (wall clock, machine creation included)
and reads its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) at the end: peak
RSS per machine = (peak - start RSS) / machines. Before it reports, the child checks
that the callbacks ran 4 times per machine and every machine ended in `s4` (deploysm:
every machine `completed`; on SQLite also `store.list(status="completed")` lists all
of them). Ratios are relative to the bare asyncio tasks. Full run: 10,000 machines;
`--quick`: 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import harness
import statemachine
from transitions.extensions.asyncio import AsyncMachine

import deploysm
from deploysm.stores import SQLiteStore

STATES = [f"s{i}" for i in range(5)]
EVENTS = [f"E{i}" for i in range(1, 5)]
STEPS = list(zip(STATES, STATES[1:], EVENTS, strict=False))
SLEEP = 0.01
BASELINE = "bare asyncio tasks (floor)"
COUNTER = [0]

Machine = Callable[[int], Awaitable[str]]


async def effect(ctx: dict[str, int], state: deploysm.State[str]) -> None:
    await deploysm.sleep(SLEEP)
    COUNTER[0] += 1


def pipeline(store: Any = None) -> deploysm.StateMachineConfig[str, str, dict[str, int]]:
    eff = deploysm.effect().execute(effect).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="pipeline",
        initial_state=STATES[0],
        states=STATES,
        events=EVENTS,
        transitions=[deploysm.Transition(a, b, e) for a, b, e in STEPS],
        effects=dict.fromkeys(STATES[1:], eff),
        final_states=[STATES[-1]],
        store=store,
    )


def deploysm_machine(config: deploysm.StateMachineConfig[str, str, dict[str, int]]) -> Machine:
    async def run(i: int) -> str:
        sm = deploysm.create_state_machine(config, {"i": i}, machine_id=f"m{i}")
        for event in EVENTS:
            result = await sm.dispatch(event)
            harness.check(result.success, f"deploysm m{i} {event}: {result.error}")
        harness.check(sm.status == "completed", f"deploysm m{i} is {sm.status}")
        return sm.get_state().name

    return run


class Model:
    async def step(self) -> None:
        await asyncio.sleep(SLEEP)
        COUNTER[0] += 1


def transitions_machine() -> Machine:
    machine = AsyncMachine(
        model=None,
        states=[{"name": s, "on_enter": "step"} for s in STATES],
        transitions=[{"trigger": e, "source": a, "dest": b} for a, b, e in STEPS],
        initial=STATES[0],
    )

    async def run(i: int) -> str:
        model: Any = Model()
        machine.add_model(model)
        for event in EVENTS:
            await getattr(model, event)()
        return str(model.state)

    return run


class Pipeline(statemachine.StateChart):  # type: ignore[type-arg]
    s0 = statemachine.State(initial=True)
    s1, s2, s3 = (statemachine.State() for _ in range(3))
    s4 = statemachine.State(final=True)
    E1, E2, E3, E4 = s0.to(s1), s1.to(s2), s2.to(s3), s3.to(s4)

    async def step(self) -> None:
        await asyncio.sleep(SLEEP)
        COUNTER[0] += 1

    on_E1 = on_E2 = on_E3 = on_E4 = step


async def python_statemachine(i: int) -> str:
    sm = Pipeline()
    await sm.activate_initial_state()
    for event in EVENTS:
        await sm.send(event)
    return str(sm.current_state_value)


async def bare(i: int) -> str:
    table = {a: b for a, b, _ in STEPS}
    state = STATES[0]
    for _ in EVENTS:
        state = table[state]
        await asyncio.sleep(SLEEP)
        COUNTER[0] += 1
    return state


def rss_bytes() -> int:
    """The current resident set size (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


async def timed(run: Machine, count: int, system: str) -> tuple[float, int]:
    """Run ``count`` machines at once; return (wall seconds, start RSS in bytes)."""
    start_rss = rss_bytes()
    t0 = time.perf_counter()
    finals = await asyncio.gather(*(run(i) for i in range(count)))
    wall = time.perf_counter() - t0
    harness.check(COUNTER[0] == 4 * count, f"{system}: {COUNTER[0]} callbacks for {count}")
    harness.check(set(finals) == {STATES[-1]}, f"{system} machines ended in {set(finals)}")
    return wall, start_rss


async def child(system: str, count: int) -> tuple[float, int]:
    if system == "deploysm on SQLite":
        with tempfile.TemporaryDirectory() as tmp:
            async with SQLiteStore(Path(tmp) / "b3.db") as store:
                figures = await timed(deploysm_machine(pipeline(store)), count, system)
                done = await store.list(status="completed")
                harness.check(len(done) == count, f"store: {len(done)} of {count} completed")
                return figures
    runners: dict[str, Callable[[], Machine]] = {
        "deploysm in memory": lambda: deploysm_machine(pipeline()),
        "transitions AsyncMachine": transitions_machine,
        "python-statemachine StateChart": lambda: python_statemachine,
        BASELINE: lambda: bare,
    }
    return await timed(runners[system](), count, system)


SYSTEMS = [
    "deploysm in memory",
    "deploysm on SQLite",
    "transitions AsyncMachine",
    "python-statemachine StateChart",
    BASELINE,
]


def child_rows(system: str, count: int) -> list[harness.Row]:
    wall, start_rss = asyncio.run(child(system, count))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    note = f"peak {peak / 2**20:,.1f} MiB, start {start_rss / 2**20:,.1f} MiB"
    return [
        harness.Row(system, wall, "s"),
        harness.Row(f"{system}, peak RSS", (peak - start_rss) / count, "B/machine", note=note),
    ]


def run_child(system: str, count: int) -> list[harness.Row]:
    cmd = [sys.executable, __file__, "--json", "--system", system, "--count", str(count)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return harness.Result.from_json(out.strip().splitlines()[-1]).rows


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=None, help="machines (10,000)")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> harness.Result:
    title = "concurrent machines, 5 states, a 10 ms sleep per effect"
    count = args.count or (1_000 if args.quick else 10_000)
    if args.system:
        return harness.Result("B3", title, rows=child_rows(args.system, count))
    walls, rss = {}, {}
    for system in SYSTEMS:
        walls[system], rss[system] = run_child(system, count)
        harness.progress(
            f"{system}: {walls[system].value:.2f} s, "
            f"{rss[system].value:,.0f} B/machine ({rss[system].note})"
        )
    for rows in (walls, rss):
        for row in rows.values():
            row.ratio = row.value / rows[BASELINE].value
    ours = "deploysm in memory"
    return harness.Result(
        id="B3",
        title=title,
        rows=[*walls.values(), *rss.values()],
        targets=[
            harness.at_most("deploysm in memory wall / bare asyncio", walls[ours].ratio or 0, 1.5),
            harness.at_most(
                "deploysm in memory peak RSS per machine / bare asyncio", rss[ours].ratio or 0, 3
            ),
        ],
        setup=f"{count:,} machines at once, one fresh child process per system",
        versions={
            "python": platform.python_version(),
            "deploysm": deploysm.__version__,
            "transitions": harness.version("transitions"),
            "python-statemachine": harness.version("python-statemachine"),
            "sqlite": __import__("sqlite3").sqlite_version,
        },
    )


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
