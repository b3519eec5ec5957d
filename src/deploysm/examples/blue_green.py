"""A blue/green deployment.

Traffic moves to green in ten 1 s steps (10%..100%), then five health checks run
60 s apart. A failed traffic switch attempt is rolled back to 0% (all blue) and
retried; a failed health check is not retried. When a step fails for good the
driver sends ``HEALTH_FAIL`` to reach ``rolling_back``, then ``ROLLBACK``: its
effect routes all traffic back to blue and tears green down, and the deployment
ends in ``rolled_back``. Should that effect fail too (after its retries), the
machine stays in ``rolling_back`` for an operator::

    sm = create_state_machine(blue_green_config(random=Random(7)), new_blue_green_context())
    await run_blue_green(sm)
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, Literal, TypedDict, get_args

from .. import (
    Clock,
    EffectResult,
    Hooks,
    RetryPolicy,
    State,
    StateMachine,
    StateMachineConfig,
    TimeoutConfig,
    Transition,
    effect,
    sleep,
)
from ._support import MaybeAwaitable, Progress, log_progress, resolve

__all__ = [
    "EVENTS",
    "STATES",
    "BlueGreenContext",
    "BlueGreenEvent",
    "BlueGreenMachine",
    "BlueGreenState",
    "HealthCheck",
    "RouteTraffic",
    "TeardownGreen",
    "blue_green_config",
    "new_blue_green_context",
    "run_blue_green",
]

BlueGreenState = Literal[
    "idle",
    "preparing_green",
    "deploying_green",
    "testing_green",
    "switching_traffic",
    "monitoring",
    "completed",
    "rolling_back",
    "rolled_back",
]
BlueGreenEvent = Literal[
    "START",
    "GREEN_READY",
    "DEPLOYED",
    "TESTS_PASSED",
    "TRAFFIC_SWITCHED",
    "HEALTH_OK",
    "HEALTH_FAIL",
    "ROLLBACK",
]
STATES: tuple[BlueGreenState, ...] = get_args(BlueGreenState)
EVENTS: tuple[BlueGreenEvent, ...] = get_args(BlueGreenEvent)


class BlueGreenContext(TypedDict):
    deployment_id: int
    blue_version: str
    green_version: str
    traffic_percentage: int
    health_checks_passed: int


BlueGreenMachine = StateMachine[BlueGreenState, BlueGreenEvent, BlueGreenContext]

HealthCheck = Callable[[BlueGreenContext], MaybeAwaitable[bool]]
"""``health_check(ctx) -> bool`` (sync or async): is green healthy right now?"""

RouteTraffic = Callable[[BlueGreenContext, int], MaybeAwaitable[bool | None]]
"""``route_traffic(ctx, pct)``: send ``pct``% of traffic to green (0 = all blue).
Returning ``False`` or raising fails the traffic switch."""

TeardownGreen = Callable[[BlueGreenContext], MaybeAwaitable[object]]
"""``teardown_green(ctx)``: remove the green deployment (``ctx["green_version"]``).
Raising fails the rollback (it is retried: it must be safe to repeat)."""

HEALTH_CHECKS = 5
HEALTH_CHECK_INTERVAL_S = 60.0
TRAFFIC_STEP_S = 1.0


def new_blue_green_context(
    deployment_id: int = 1, blue_version: str = "v1", green_version: str = "v2"
) -> BlueGreenContext:
    return {
        "deployment_id": deployment_id,
        "blue_version": blue_version,
        "green_version": green_version,
        "traffic_percentage": 0,
        "health_checks_passed": 0,
    }


def blue_green_config(
    *,
    health_check: HealthCheck | None = None,
    route_traffic: RouteTraffic | None = None,
    progress: Progress | None = None,
    clock: Clock | None = None,
    random: _random.Random | None = None,
    hooks: Hooks | None = None,
    teardown_green: TeardownGreen | None = None,
) -> StateMachineConfig[BlueGreenState, BlueGreenEvent, BlueGreenContext]:
    """The ``blue-green-deployment`` workflow.

    ``health_check`` defaults to a coin that passes 90% of the time, drawn from
    ``random`` (the machine's random source, so a seeded run is reproducible).
    ``route_traffic`` and ``teardown_green`` default to doing nothing.
    """
    rng = random if random is not None else _random.Random()
    report = progress if progress is not None else log_progress

    def coin(ctx: BlueGreenContext) -> bool:
        return rng.random() > 0.1  # 90% success rate

    check = health_check if health_check is not None else coin

    async def route(ctx: BlueGreenContext, pct: int) -> bool:
        if route_traffic is None:
            return True
        return await resolve(route_traffic(ctx, pct)) is not False

    async def switch_traffic(ctx: BlueGreenContext, state: State[Any]) -> EffectResult:
        report("attempt", f"switching traffic to green (attempt {state.attempts})")
        for pct in range(10, 101, 10):
            if not await route(ctx, pct):
                return EffectResult(False, f"router refused {pct}% to green")
            ctx["traffic_percentage"] = pct
            report("traffic", f"Routing {pct}% traffic to green")
            await sleep(TRAFFIC_STEP_S)
        return EffectResult(True, "Traffic switched")

    async def revert_traffic(ctx: BlueGreenContext, state: State[Any]) -> None:
        report("rollback", "Reverting traffic to blue")
        await route(ctx, 0)
        ctx["traffic_percentage"] = 0

    async def monitor(ctx: BlueGreenContext, state: State[Any]) -> EffectResult:
        report("attempt", f"monitoring green (attempt {state.attempts})")
        for i in range(1, HEALTH_CHECKS + 1):
            await sleep(HEALTH_CHECK_INTERVAL_S)
            if not await resolve(check(ctx)):
                report("health", f"health check {i}/{HEALTH_CHECKS} FAILED")
                return EffectResult(False, "Health check failed", can_retry=False)
            ctx["health_checks_passed"] += 1
            report("health", f"health check {i}/{HEALTH_CHECKS} ok")
        return EffectResult(True, "Monitoring complete")

    switch_traffic_effect = (
        effect().execute(switch_traffic).rollback(revert_traffic).set_idempotent(False).build()
    )

    async def roll_back(ctx: BlueGreenContext, state: State[Any]) -> EffectResult:
        report("rollback", "Routing all traffic back to blue")
        if not await route(ctx, 0):
            return EffectResult(False, "router refused 0% to green")
        ctx["traffic_percentage"] = 0
        report("teardown", f"Tearing down green {ctx['green_version']}")
        if teardown_green is not None:
            await resolve(teardown_green(ctx))
        return EffectResult(True, "Traffic back on blue, green torn down")

    monitor_effect = effect().execute(monitor).set_idempotent(True).build()
    # routing 0% to green and tearing green down again are harmless: idempotent
    roll_back_effect = effect().execute(roll_back).set_idempotent(True).build()

    transitions: list[Transition[BlueGreenState, BlueGreenEvent]] = [
        Transition("idle", "preparing_green", "START"),
        Transition("preparing_green", "deploying_green", "GREEN_READY"),
        Transition("deploying_green", "testing_green", "DEPLOYED"),
        Transition("testing_green", "switching_traffic", "TESTS_PASSED"),
        Transition("switching_traffic", "monitoring", "TRAFFIC_SWITCHED"),
        Transition("monitoring", "completed", "HEALTH_OK"),
        Transition(
            ["testing_green", "switching_traffic", "monitoring"], "rolling_back", "HEALTH_FAIL"
        ),
        Transition("rolling_back", "rolled_back", "ROLLBACK"),
    ]
    return StateMachineConfig(
        id="blue-green-deployment",
        initial_state="idle",
        states=STATES,
        events=EVENTS,
        transitions=transitions,
        effects={
            "switching_traffic": switch_traffic_effect,
            "monitoring": monitor_effect,
            "rolled_back": roll_back_effect,
        },
        retry_policy=RetryPolicy(
            max_attempts=3,
            initial_delay_ms=5000,
            max_delay_ms=60000,
            backoff_multiplier=2,
            jitter_factor=0.2,
        ),
        timeout=TimeoutConfig(effect_timeout_ms=600000),  # 10 minutes
        hooks=hooks,
        clock=clock,
        random=rng,
    )


NEXT_EVENT: dict[str, BlueGreenEvent] = {
    "idle": "START",
    "preparing_green": "GREEN_READY",
    "deploying_green": "DEPLOYED",
    "testing_green": "TESTS_PASSED",
    "switching_traffic": "TRAFFIC_SWITCHED",
    "monitoring": "HEALTH_OK",
    "rolling_back": "ROLLBACK",
}
"""The event an operator sends next from each non-final state (``rolling_back``: on
the way to ``rolled_back``)."""


async def run_blue_green(machine: BlueGreenMachine) -> BlueGreenMachine:
    """Advance ``machine`` from wherever it is to a final state, as an operator would.

    After each success the next event of :data:`NEXT_EVENT` is sent; when a step
    fails (traffic switch, monitoring) ``HEALTH_FAIL`` is sent to reach
    ``rolling_back``, and from there ``ROLLBACK`` rolls the deployment back to
    ``rolled_back``. Stops early if the machine is no longer active, or stays in
    ``rolling_back`` if the rollback fails.
    """
    while machine.status == "active" and not machine.is_final():
        result = await machine.dispatch(NEXT_EVENT[machine.get_state().name])
        if result.success:
            continue
        if "HEALTH_FAIL" not in machine.available_events():
            break
        failed = await machine.dispatch(
            {"type": "HEALTH_FAIL", "payload": {"reason": str(result.error)}}
        )
        if not failed.success:
            break
    return machine
