"""B1: in-memory 10-state cycle, one trivial async callback per transition.

**Workload.** A 10-state ring (`s0 -> s1 -> ... -> s9 -> s0` on the event `NEXT`),
one machine, `N` sequential transitions inside one `asyncio.run`, each transition
awaiting one trivial async callback that increments a counter. No hooks, no
persistence, system clock. Per system:

- deploysm: one `StateMachineConfig` with the same idempotent effect on every state,
  `await sm.dispatch("NEXT")`;
- `transitions` `AsyncMachine`, one model, an async `on_enter` callback on every
  state, `await model.NEXT()`;
- `python-statemachine` `StateChart` (the 3.x base class), the ring declared as one
  `NEXT` event, an async `on_NEXT` transition action, `await sm.send("NEXT")`;
- the floor: a bare loop doing a dict lookup for the next state and `await noop()`.

Rounds are interleaved (round 1 of every system, then round 2, ...) so machine noise
hits all systems alike; each round of each system runs in its own `asyncio.run`, after
`gc.collect()`. The best round of each is reported as transitions/second. Before any
figure is returned, every round is checked: the callback ran exactly once per
transition and the machine ends in the state the ring predicts (deploysm: its metrics
count every transition). Ratios are relative to `transitions` `AsyncMachine`.
Full run: 200,000 transitions per round, best of 5; `--quick`: 5,000, best of 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import harness
import statemachine
from transitions.extensions.asyncio import AsyncMachine

import deploysm

STATES = [f"s{i}" for i in range(10)]
NEXT = {s: STATES[(i + 1) % len(STATES)] for i, s in enumerate(STATES)}
BASELINE = "transitions AsyncMachine"
COUNTER = [0]

Runner = Callable[[int], Coroutine[Any, Any, str]]


def ring_config() -> deploysm.StateMachineConfig[str, str, dict[str, int]]:
    async def step(ctx: dict[str, int], state: deploysm.State[str]) -> None:
        COUNTER[0] += 1

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="ring",
        initial_state=STATES[0],
        states=STATES,
        events=["NEXT"],
        transitions=[deploysm.Transition(s, NEXT[s], "NEXT") for s in STATES],
        effects=dict.fromkeys(STATES, eff),
    )


CONFIG = ring_config()


async def run_deploysm(n: int) -> str:
    sm = deploysm.create_state_machine(CONFIG, {})
    dispatch = sm.dispatch
    for _ in range(n):
        await dispatch("NEXT")
    harness.check(sm.get_metrics().total_transitions == n, "deploysm committed every transition")
    return sm.get_state().name


class RingModel:
    async def step(self) -> None:
        COUNTER[0] += 1


async def run_transitions(n: int) -> str:
    model: Any = RingModel()
    AsyncMachine(
        model=model,
        states=[{"name": s, "on_enter": "step"} for s in STATES],
        transitions=[{"trigger": "NEXT", "source": s, "dest": NEXT[s]} for s in STATES],
        initial=STATES[0],
    )
    trigger: Callable[[], Awaitable[Any]] = model.NEXT
    for _ in range(n):
        await trigger()
    return str(model.state)


class Ring(statemachine.StateChart):  # type: ignore[type-arg]
    s0 = statemachine.State(initial=True)
    s1, s2, s3, s4, s5 = (statemachine.State() for _ in range(5))
    s6, s7, s8, s9 = (statemachine.State() for _ in range(4))
    NEXT = (
        s0.to(s1) | s1.to(s2) | s2.to(s3) | s3.to(s4) | s4.to(s5)
        | s5.to(s6) | s6.to(s7) | s7.to(s8) | s8.to(s9) | s9.to(s0)
    )  # fmt: skip

    async def on_NEXT(self) -> None:
        COUNTER[0] += 1


async def run_python_statemachine(n: int) -> str:
    sm = Ring()
    await sm.activate_initial_state()
    send = sm.send
    for _ in range(n):
        await send("NEXT")
    return str(sm.current_state_value)


async def run_bare(n: int) -> str:
    async def noop() -> None:
        COUNTER[0] += 1

    table = NEXT
    state = STATES[0]
    for _ in range(n):
        state = table[state]
        await noop()
    return state


SYSTEMS: dict[str, Runner] = {
    "deploysm (in memory)": run_deploysm,
    BASELINE: run_transitions,
    "python-statemachine StateChart": run_python_statemachine,
    "bare asyncio loop (floor)": run_bare,
}


def one_round(name: str, fn: Runner, n: int) -> float:
    """Run ``n`` transitions in a fresh event loop; return transitions/second."""
    COUNTER[0] = 0
    gc.collect()
    t0 = time.perf_counter()
    final = asyncio.run(fn(n))
    dt = time.perf_counter() - t0
    harness.check(COUNTER[0] == n, f"{name}: {COUNTER[0]:,} callbacks for {n:,} transitions")
    harness.check(final == STATES[n % len(STATES)], f"{name} ended in {final}")
    return n / dt


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transitions", type=int, default=None, help="per round (200,000)")
    parser.add_argument("--rounds", type=int, default=None, help="best of (5)")


def measure(args: argparse.Namespace) -> harness.Result:
    n = args.transitions or (5_000 if args.quick else 200_000)
    rounds = args.rounds or (2 if args.quick else 5)
    best = dict.fromkeys(SYSTEMS, 0.0)
    for r in range(rounds):
        for name, fn in SYSTEMS.items():
            rate = one_round(name, fn, n)
            best[name] = max(best[name], rate)
            harness.progress(f"round {r + 1}/{rounds} {name}: {rate:,.0f} transitions/s")
    base = best[BASELINE]
    rows = [
        harness.Row(name, rate, "transitions/s", rate / base, f"{1e6 / rate:.2f} us/transition")
        for name, rate in best.items()
    ]
    ours = best["deploysm (in memory)"]
    return harness.Result(
        id="B1",
        title="in-memory 10-state cycle, one trivial async callback per transition",
        rows=rows,
        targets=[
            harness.at_least("deploysm / transitions AsyncMachine", ours / base, 4),
            harness.at_least(
                "deploysm / python-statemachine", ours / best["python-statemachine StateChart"], 10
            ),
        ],
        setup=f"{n:,} transitions per round, best of {rounds} interleaved rounds",
        versions=versions(),
    )


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "deploysm": deploysm.__version__,
        "transitions": harness.version("transitions"),
        "python-statemachine": harness.version("python-statemachine"),
    }


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
