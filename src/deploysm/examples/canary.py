"""The seed's canary deployment.

Canary traffic goes to 10%, 50% and 100%; each step watches the metrics for
300 s and fails (without retry) when the error rate or the p99 latency is above
the context's thresholds. The step is not idempotent: a failed step is rolled
back to 0% canary traffic, and the driver then sends ``METRICS_BAD`` to reach
``aborted``::

    sm = create_state_machine(canary_config(random=Random(7)), new_canary_context())
    await run_canary(sm)
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, Literal, TypedDict, get_args

from .. import (
    Clock,
    Effect,
    EffectResult,
    Hooks,
    RetryPolicy,
    State,
    StateMachine,
    StateMachineConfig,
    Transition,
    effect,
    sleep,
)
from ._support import MaybeAwaitable, Progress, log_progress, resolve

__all__ = [
    "EVENTS",
    "STATES",
    "CanaryContext",
    "CanaryEvent",
    "CanaryMachine",
    "CanaryState",
    "Metrics",
    "Thresholds",
    "canary_config",
    "increment_traffic_effect",
    "new_canary_context",
    "run_canary",
]

CanaryState = Literal[
    "idle",
    "deploying_canary",
    "monitoring_10_percent",
    "monitoring_50_percent",
    "monitoring_100_percent",
    "completed",
    "aborted",
]
CanaryEvent = Literal[
    "START",
    "CANARY_DEPLOYED",
    "METRICS_GOOD_10",
    "METRICS_GOOD_50",
    "METRICS_GOOD_100",
    "METRICS_BAD",
    "ABORT",
]
STATES: tuple[CanaryState, ...] = get_args(CanaryState)
EVENTS: tuple[CanaryEvent, ...] = get_args(CanaryEvent)


class Thresholds(TypedDict):
    max_error_rate: float
    max_latency_p99: float


class CanaryContext(TypedDict):
    deployment_id: int
    version: str
    traffic_percentage: int
    error_rate: float
    latency_p99: float
    thresholds: Thresholds


CanaryMachine = StateMachine[CanaryState, CanaryEvent, CanaryContext]

Metrics = Callable[[CanaryContext, int], MaybeAwaitable[tuple[float, float]]]
"""``metrics(ctx, pct) -> (error_rate, latency_p99_ms)`` (sync or async), read
after watching ``pct``% canary traffic."""

WATCH_S = 300.0  # watch each step's metrics for 5 minutes


def new_canary_context(
    deployment_id: int = 1,
    version: str = "v2",
    max_error_rate: float = 0.018,
    max_latency_p99: float = 145.0,
) -> CanaryContext:
    return {
        "deployment_id": deployment_id,
        "version": version,
        "traffic_percentage": 0,
        "error_rate": 0.0,
        "latency_p99": 0.0,
        "thresholds": {"max_error_rate": max_error_rate, "max_latency_p99": max_latency_p99},
    }


def increment_traffic_effect(
    target_pct: int, metrics: Metrics, progress: Progress = log_progress
) -> Effect[Any]:
    """Move canary traffic to ``target_pct``%, watch, judge; roll back to 0%."""

    async def execute(ctx: CanaryContext, state: State[Any]) -> EffectResult:
        ctx["traffic_percentage"] = target_pct
        progress("traffic", f"Canary traffic: {target_pct}% (attempt {state.attempts})")
        await sleep(WATCH_S)
        error_rate, latency_p99 = await resolve(metrics(ctx, target_pct))
        ctx["error_rate"] = error_rate
        ctx["latency_p99"] = latency_p99
        progress("metrics", f"error rate {error_rate:.2%}, p99 latency {latency_p99:.0f} ms")
        limits = ctx["thresholds"]
        if error_rate > limits["max_error_rate"]:
            return EffectResult(
                False,
                f"Error rate {error_rate:.2%} exceeds threshold {limits['max_error_rate']:.2%}",
                can_retry=False,
            )
        if latency_p99 > limits["max_latency_p99"]:
            return EffectResult(
                False,
                f"Latency {latency_p99:.0f}ms exceeds threshold {limits['max_latency_p99']:.0f}ms",
                can_retry=False,
            )
        return EffectResult(True, f"Metrics healthy at {target_pct}%")

    def rollback(ctx: CanaryContext, state: State[Any]) -> None:
        progress("rollback", "Aborting canary, reverting to 0%")
        ctx["traffic_percentage"] = 0

    return (
        effect()
        .execute(execute)
        .rollback(rollback)
        .set_idempotent(False)
        .named(f"increment_traffic_{target_pct}")
        .build()
    )


def canary_config(
    *,
    metrics: Metrics | None = None,
    progress: Progress | None = None,
    clock: Clock | None = None,
    random: _random.Random | None = None,
    hooks: Hooks | None = None,
) -> StateMachineConfig[CanaryState, CanaryEvent, CanaryContext]:
    """The seed's ``canary-deployment``.

    ``metrics`` defaults to the seed's simulation, drawn from ``random`` (the
    machine's random source): error rate uniform in 0-2%, p99 latency in 100-150 ms.
    """
    rng = random if random is not None else _random.Random()
    report = progress if progress is not None else log_progress

    def simulated(ctx: CanaryContext, pct: int) -> tuple[float, float]:
        return rng.random() * 0.02, 100 + rng.random() * 50

    read = metrics if metrics is not None else simulated
    transitions: list[Transition[CanaryState, CanaryEvent]] = [
        Transition("idle", "deploying_canary", "START"),
        Transition("deploying_canary", "monitoring_10_percent", "CANARY_DEPLOYED"),
        Transition("monitoring_10_percent", "monitoring_50_percent", "METRICS_GOOD_10"),
        Transition("monitoring_50_percent", "monitoring_100_percent", "METRICS_GOOD_50"),
        Transition("monitoring_100_percent", "completed", "METRICS_GOOD_100"),
        Transition(
            ["monitoring_10_percent", "monitoring_50_percent", "monitoring_100_percent"],
            "aborted",
            "METRICS_BAD",
        ),
    ]
    return StateMachineConfig(
        id="canary-deployment",
        initial_state="idle",
        states=STATES,
        events=EVENTS,
        transitions=transitions,
        effects={
            "monitoring_10_percent": increment_traffic_effect(10, read, report),
            "monitoring_50_percent": increment_traffic_effect(50, read, report),
            "monitoring_100_percent": increment_traffic_effect(100, read, report),
        },
        retry_policy=RetryPolicy(
            max_attempts=2,
            initial_delay_ms=10000,
            max_delay_ms=30000,
            backoff_multiplier=2,
            jitter_factor=0.15,
        ),
        hooks=hooks,
        clock=clock,
        random=rng,
    )


NEXT_EVENT: dict[str, CanaryEvent] = {
    "idle": "START",
    "deploying_canary": "CANARY_DEPLOYED",
    "monitoring_10_percent": "METRICS_GOOD_10",
    "monitoring_50_percent": "METRICS_GOOD_50",
    "monitoring_100_percent": "METRICS_GOOD_100",
}
"""The event an operator sends next from each non-final state on the happy path."""


async def run_canary(machine: CanaryMachine) -> CanaryMachine:
    """Advance ``machine`` to a final state, as an operator would.

    After each success the next event of :data:`NEXT_EVENT` is sent. When a step
    fails (its traffic already rolled back to 0%), ``METRICS_BAD`` is sent to
    reach ``aborted``. The seed has no way out of ``deploying_canary`` when the
    first (10%) step fails, so there the machine is marked failed instead.
    """
    while machine.status == "active" and not machine.is_final():
        result = await machine.dispatch(NEXT_EVENT[machine.get_state().name])
        if result.success:
            continue
        if "METRICS_BAD" in machine.available_events():
            bad = await machine.dispatch(
                {"type": "METRICS_BAD", "payload": {"reason": str(result.error)}}
            )
            if not bad.success:
                break
        elif machine.status == "active":
            await machine.fail(result.error)
    return machine
