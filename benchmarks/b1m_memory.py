"""B1m: memory per idle machine instance, 10,000 instances of one definition.

**Workload.** The B1 definition (the 10-state ring on `NEXT`, one async callback per
transition), instantiated 10,000 times; each instance gets its own context, the same
small dict `{"i": i}` in every system, and all instances stay referenced (in one
list) while memory is read. Per system:

- deploysm: one shared `StateMachineConfig`,
  `create_state_machine(config, {"i": i}, machine_id=f"m{i}")` per instance;
- `transitions` `AsyncMachine`, one machine per model (the model holds the context);
- `transitions` `AsyncMachine`, one shared machine, `add_model` for every model;
- `python-statemachine` `StateChart`, one instance per machine, the context held by its
  model object, `await sm.activate_initial_state()`;
- the floor: a slotted object with `state` and `model` (the context) attributes.

**Method.** Each system runs in a fresh child process (this script with `--system`),
inside one event loop, so nothing allocated by another system is counted. The child
builds the definition and one warm-up instance (shared, once-per-definition costs are
not per-instance costs), then starts `tracemalloc`, runs `gc.collect()`, reads the
traced memory, creates the instances, runs `gc.collect()` again and reads it again:
bytes per instance = delta / count (the list holding them adds 8 B each to every
system). The child checks it built `count` instances, each in state `s0`, before it
reports. The biggest allocations of deploysm's instances (`tracemalloc` snapshot
compare, top 5 by file:line) go to the row's note. Ratios are relative to deploysm.
Full run: 10,000 instances; `--quick`: 200.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import platform
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
from b1_inmemory import CONFIG, NEXT, STATES, Ring
from transitions.extensions.asyncio import AsyncMachine

import deploysm

BASELINE = "deploysm"
TOP = 5


class Model:
    """The peers' domain object: it holds the machine's context."""

    def __init__(self, ctx: dict[str, int]) -> None:
        self.ctx = ctx

    async def step(self) -> None:
        pass


class Slotted:
    __slots__ = ("model", "state")

    def __init__(self, state: str, model: dict[str, int]) -> None:
        self.state = state
        self.model = model


def transitions_machine(model: Model | None) -> AsyncMachine:
    return AsyncMachine(
        model=model,
        states=[{"name": s, "on_enter": "step"} for s in STATES],
        transitions=[{"trigger": "NEXT", "source": s, "dest": NEXT[s]} for s in STATES],
        initial=STATES[0],
    )


SHARED: list[AsyncMachine] = []


def shared_machine(model: Model) -> Model:
    if not SHARED:
        SHARED.append(transitions_machine(None))
    SHARED[0].add_model(model)
    return model


async def python_statemachine(ctx: dict[str, int]) -> Ring:
    sm = Ring(model=Model(ctx))
    await sm.activate_initial_state()
    return sm


STATE_OF: dict[str, Callable[[Any], str]] = {
    "deploysm": lambda sm: sm.get_state().name,
    "transitions, machine per model": lambda m: m.state,
    "transitions, shared machine + add_model": lambda m: m.state,
    "python-statemachine StateChart": lambda sm: sm.current_state_value,
    "slotted object {state, model} (floor)": lambda o: o.state,
}


async def make(system: str, i: int) -> Any:
    ctx = {"i": i}
    if system == "deploysm":
        return deploysm.create_state_machine(CONFIG, ctx, machine_id=f"m{i}")
    if system == "transitions, machine per model":
        model = Model(ctx)
        transitions_machine(model)
        return model
    if system == "transitions, shared machine + add_model":
        return shared_machine(Model(ctx))
    if system == "python-statemachine StateChart":
        return await python_statemachine(ctx)
    return Slotted(STATES[0], ctx)


async def child(system: str, count: int) -> harness.Row:
    """Bytes per instance of ``system``; runs in the child process."""
    await make(system, -1)  # warm-up: the shared definition and its caches
    breakdown = system == BASELINE  # a snapshot of the peers' instances costs seconds
    tracemalloc.start()
    gc.collect()
    first = tracemalloc.take_snapshot() if breakdown else None
    before = tracemalloc.get_traced_memory()[0]
    instances = [await make(system, i) for i in range(count)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    harness.check(len(instances) == count, f"{system} built {len(instances)} of {count}")
    states = {STATE_OF[system](x) for x in instances}
    harness.check(states == {STATES[0]}, f"{system} instances are in {states}")
    note = ""
    if first is not None:
        top = tracemalloc.take_snapshot().compare_to(first, "lineno")[:TOP]
        note = "; ".join(
            f"{s.size_diff / count:.0f} B {Path(frame.filename).name}:{frame.lineno} "
            f"`{linecache.getline(frame.filename, frame.lineno).strip()[:48]}`"
            for s in top
            for frame in [s.traceback[0]]
        )
    return harness.Row(system, (after - before) / count, "B/machine", note=note)


def run_child(system: str, count: int) -> harness.Row:
    cmd = [sys.executable, __file__, "--json", "--system", system, "--count", str(count)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return harness.Result.from_json(out.strip().splitlines()[-1]).rows[0]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=None, help="instances (10,000)")
    parser.add_argument("--system", choices=list(STATE_OF), help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> harness.Result:
    title = "memory per idle machine instance"
    count = args.count or (200 if args.quick else 10_000)
    if args.system:
        return harness.Result("B1m", title, rows=[asyncio.run(child(args.system, count))])
    rows = []
    for system in STATE_OF:
        row = run_child(system, count)
        harness.progress(f"{system}: {row.value:,.0f} B per instance")
        rows.append(row)
    ours = rows[0]
    harness.progress("deploysm's biggest allocations per instance:")
    for line in ours.note.split("; "):
        harness.progress(f"  {line}")
    for row in rows:
        row.ratio = row.value / ours.value
    return harness.Result(
        id="B1m",
        title=title,
        rows=rows,
        targets=[harness.at_most("deploysm bytes per idle machine", ours.value, 2048)],
        setup=f"{count:,} instances of the B1 ring, tracemalloc, one child process per system",
        versions={
            "python": platform.python_version(),
            "deploysm": deploysm.__version__,
            "transitions": harness.version("transitions"),
            "python-statemachine": harness.version("python-statemachine"),
        },
    )


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
