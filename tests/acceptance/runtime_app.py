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


def _one_step(name: str, step: Any, **more: Any) -> deploysm.StateMachineConfig[str, str, Any]:
    """``a -> b`` on ``GO``, running ``step`` (idempotent)."""
    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id=name,
        initial_state="a",
        states=["a", "b"],
        events=["GO"],
        transitions=[deploysm.Transition("a", "b", "GO")],
        effects={"b": eff},
        **more,
    )


def flaky() -> deploysm.StateMachineConfig[str, str, Any]:
    """The first attempt fails; the retry, 4 s later, succeeds."""

    def step(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        if state.attempts < 2:
            raise RuntimeError("first attempt fails")

    policy = {"max_attempts": 3, "initial_delay_ms": 4000, "jitter_factor": 0}
    return _one_step("flaky", step, retry_policy=policy)


def slow() -> deploysm.StateMachineConfig[str, str, Any]:
    """An effect that takes $SLOW_EFFECT_S seconds (0 when unset)."""

    async def step(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        await asyncio.sleep(float(os.environ.get("SLOW_EFFECT_S", "0")))

    return _one_step("slow", step)


WORKFLOWS_WITH_RETRIES = {"pipeline": pipeline, "flaky": flaky, "slow": slow}
