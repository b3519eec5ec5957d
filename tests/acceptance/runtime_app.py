"""A workflow registry for the runtime CLI tests (``--app ...runtime_app:WORKFLOWS``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import deploysm


def pipeline() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    def step(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        ctx.setdefault("seen", []).append(state.name)

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="pipeline",
        initial_state="a",
        states=["a", "b", "c"],
        events=["NEXT"],
        transitions=[deploysm.Transition("a", "b", "NEXT"), deploysm.Transition("b", "c", "NEXT")],
        effects={"b": eff, "c": eff},
    )


WORKFLOWS = {"pipeline": pipeline}


def flaky() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    """The first attempt fails; the retry, 4 s later, succeeds."""

    def step(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        if state.attempts < 2:
            raise RuntimeError("first attempt fails")

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="flaky",
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[deploysm.Transition("a", "b", "GO")],
        effects={"b": eff},
        retry_policy={"max_attempts": 3, "initial_delay_ms": 4000, "jitter_factor": 0},
    )


def slow() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    """An effect that takes $SLOW_EFFECT_S seconds (0 when unset)."""

    async def step(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        await asyncio.sleep(float(os.environ.get("SLOW_EFFECT_S", "0")))

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="slow",
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[deploysm.Transition("a", "b", "GO")],
        effects={"b": eff},
    )


WORKFLOWS_WITH_RETRIES = {"pipeline": pipeline, "flaky": flaky, "slow": slow}
