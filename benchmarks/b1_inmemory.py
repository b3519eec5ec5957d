"""B1: in-memory 10-state cycle, one trivial async effect per transition.

Prints deploysm's transitions/second beside a bare asyncio loop (dict lookup +
``await noop()``) measured in the same run, best of N rounds each, and checks
that every system really ran the effect once per transition before printing.

    python benchmarks/b1_inmemory.py [--transitions 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import sys
import time
from collections.abc import Awaitable, Callable

import deploysm

STATES = [f"s{i}" for i in range(10)]


def ring_config(counter: list[int]) -> deploysm.StateMachineConfig[str, str, dict[str, int]]:
    async def step(ctx: dict[str, int], state: deploysm.State[str]) -> None:
        counter[0] += 1

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    n = len(STATES)
    return deploysm.StateMachineConfig(
        id="ring",
        initial_state=STATES[0],
        states=STATES,
        events=["NEXT"],
        transitions=[deploysm.Transition(STATES[i], STATES[(i + 1) % n], "NEXT") for i in range(n)],
        effects=dict.fromkeys(STATES, eff),
    )


COUNTER = [0]
CONFIG = ring_config(COUNTER)


async def run_deploysm(n: int) -> int:
    COUNTER[0] = 0
    sm = deploysm.create_state_machine(CONFIG, {})
    dispatch = sm.dispatch
    for _ in range(n):
        await dispatch("NEXT")
    if sm.get_metrics().total_transitions != n:
        raise SystemExit("deploysm did not commit every transition")
    return COUNTER[0]


async def run_bare(n: int) -> int:
    counter = [0]

    async def noop() -> None:
        counter[0] += 1

    table = {s: STATES[(i + 1) % len(STATES)] for i, s in enumerate(STATES)}
    state = STATES[0]
    for _ in range(n):
        state = table[state]
        await noop()
    return counter[0]


def best_rate(fn: Callable[[int], Awaitable[int]], n: int, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        done = asyncio.run(fn(n))  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        if done != n:
            raise SystemExit(f"{fn.__name__} ran {done} effects for {n} transitions")
        best = max(best, n / dt)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transitions", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    ours = best_rate(run_deploysm, args.transitions, args.rounds)
    bare = best_rate(run_bare, args.transitions, args.rounds)
    print(f"B1 in-memory 10-state cycle, {args.transitions:,} transitions, best of {args.rounds}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, deploysm "
        f"{deploysm.__version__}"
    )
    print(f"{'system':<34}{'transitions/s':>15}{'us/transition':>15}")
    for name, rate in (("deploysm (in memory)", ours), ("bare asyncio loop (floor)", bare)):
        print(f"{name:<34}{rate:>15,.0f}{1e6 / rate:>15.2f}")
    print(
        f"deploysm overhead per transition: {1e6 / ours - 1e6 / bare:.2f} us "
        f"({bare / ours:.0f}x the floor's cost)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
