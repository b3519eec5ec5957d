"""The three example workflows, run end to end on virtual time (no real waiting)."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

import deploysm
from deploysm import Hooks, create_state_machine
from deploysm.examples import blue_green as bg
from deploysm.examples import canary as cn
from deploysm.examples import simple as sp
from deploysm.testing import VirtualClock

SEED = 1234


class Recorder:
    """Collects the effects' progress lines and the retry delays the engine logs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.delays_s: list[float] = []

    def progress(self, kind: str, message: str) -> None:
        self.lines.append((kind, message))

    def on_log(self, level: str, message: str, meta: Mapping[str, Any]) -> None:
        if "delay_ms" in meta:
            self.delays_s.append(meta["delay_ms"] / 1000.0)

    def hooks(self) -> Hooks:
        return Hooks(on_log=self.on_log)

    def kind(self, kind: str) -> list[str]:
        return [m for k, m in self.lines if k == kind]


def names(sm: deploysm.StateMachine[Any, Any, Any]) -> list[str]:
    return [s.name for s in sm.get_history()] + [sm.get_state().name]


def events(sm: deploysm.StateMachine[Any, Any, Any]) -> list[str]:
    return [s.data["event"] for s in [*sm.get_history(), sm.get_state()][1:]]


def always(value: bool) -> bg.HealthCheck:
    return lambda ctx: value


def blue_green(
    *,
    clock: VirtualClock,
    rec: Recorder | None = None,
    seed: int = SEED,
    **kwargs: Any,
) -> bg.BlueGreenMachine:
    rec = rec or Recorder()
    config = bg.blue_green_config(
        clock=clock, random=random.Random(seed), progress=rec.progress, hooks=rec.hooks(), **kwargs
    )
    return create_state_machine(config, bg.new_blue_green_context())


def canary(*, clock: VirtualClock, rec: Recorder, metrics: cn.Metrics) -> cn.CanaryMachine:
    config = cn.canary_config(
        metrics=metrics, clock=clock, random=random.Random(SEED), progress=rec.progress
    )
    return create_state_machine(config, cn.new_canary_context())


@pytest.mark.parametrize(
    "factory", [sp.simple_config, bg.blue_green_config, cn.canary_config], ids=lambda f: f.__name__
)
def test_configs_validate_clean(factory: Any) -> None:
    report = deploysm.validate(factory())
    assert report.errors == []
    assert report.warnings == []


# -- simple ----------------------------------------------------------------------------


async def test_simple_flow_completes_with_expected_history() -> None:
    clock = VirtualClock()
    rec = Recorder()
    config = sp.simple_config(clock=clock, random=random.Random(SEED), progress=rec.progress)
    sm = create_state_machine(config, sp.new_simple_context(123, 456))

    assert await sp.run_simple(sm) is sm

    assert names(sm) == ["idle", "validating", "deploying", "completed"]
    assert events(sm) == ["START", "VALIDATED", "DEPLOYED"]
    history = sm.get_history()
    assert [s.data.get("message") for s in history] == [None, "Validation passed", "Deployed"]
    assert [s.attempts for s in history] == [0, 1, 1]
    assert sm.status == "completed"
    assert sm.get_context()["logs"] == ["Validating deployment 123", "Deploying 456"]
    assert rec.kind("step") == ["Validating deployment 123", "Deploying 456"]
    assert clock.elapsed == 0.0


# -- blue/green ------------------------------------------------------------------------


async def test_blue_green_happy_path() -> None:
    clock = VirtualClock()
    rec = Recorder()
    sm = blue_green(clock=clock, rec=rec, health_check=always(True))

    await bg.run_blue_green(sm)

    assert names(sm) == [
        "idle",
        "preparing_green",
        "deploying_green",
        "testing_green",
        "switching_traffic",
        "monitoring",
        "completed",
    ]
    assert events(sm) == [
        "START",
        "GREEN_READY",
        "DEPLOYED",
        "TESTS_PASSED",
        "TRAFFIC_SWITCHED",
        "HEALTH_OK",
    ]
    ctx = sm.get_context()
    assert ctx["traffic_percentage"] == 100
    assert ctx["health_checks_passed"] == 5
    assert sm.status == "completed"
    assert rec.kind("traffic") == [f"Routing {p}% traffic to green" for p in range(10, 101, 10)]
    assert rec.kind("health") == [f"health check {i}/5 ok" for i in range(1, 6)]
    # ten 1 s traffic steps, then five 60 s health-check intervals; nothing else
    assert clock.elapsed == 10.0 + 300.0
    assert sm.get_metrics().total_retries == 0


async def test_blue_green_seeded_coin_health_checks_run_on_machine_random() -> None:
    clock = VirtualClock()
    sm = blue_green(clock=clock)  # the seed's 90% coin, drawn from the machine's random
    await bg.run_blue_green(sm)
    passed = sm.get_context()["health_checks_passed"]
    if sm.get_state().name == "completed":
        assert passed == 5
        assert clock.elapsed == 310.0
    else:
        assert names(sm)[-2:] == ["rolling_back", "rolled_back"]
        assert clock.elapsed == 10.0 + 60.0 * (passed + 1)


async def test_failing_health_check_rolls_back_to_blue_and_tears_down_green() -> None:
    clock = VirtualClock()
    rec = Recorder()
    routed: list[int] = []
    torn_down: list[str] = []
    sm = blue_green(
        clock=clock,
        rec=rec,
        health_check=lambda ctx: ctx["health_checks_passed"] < 2,
        route_traffic=lambda ctx, pct: routed.append(pct),
        teardown_green=lambda ctx: torn_down.append(ctx["green_version"]),
    )

    await bg.run_blue_green(sm)

    assert names(sm)[-4:] == ["testing_green", "switching_traffic", "rolling_back", "rolled_back"]
    assert events(sm)[-2:] == ["HEALTH_FAIL", "ROLLBACK"]
    assert "Health check failed" in sm.get_history()[-1].data["payload"]["reason"]
    assert sm.get_state().data["message"] == "Traffic back on blue, green torn down"
    assert sm.is_final()
    assert sm.get_context()["health_checks_passed"] == 2
    assert sm.get_context()["traffic_percentage"] == 0
    assert routed == [*range(10, 101, 10), 0]
    assert torn_down == ["v2"]
    assert rec.kind("rollback") == ["Routing all traffic back to blue"]
    assert rec.kind("teardown") == ["Tearing down green v2"]
    assert rec.kind("health")[-1] == "health check 3/5 FAILED"
    m = sm.get_metrics()
    assert m.total_retries == 0  # can_retry=False: a failed health check is final
    assert m.total_errors == 1
    assert clock.elapsed == 10.0 + 3 * 60.0


async def test_traffic_switch_failure_rolls_traffic_back_to_blue() -> None:
    clock = VirtualClock()
    rec = Recorder()
    routed: list[int] = []

    def route(ctx: bg.BlueGreenContext, pct: int) -> bool:
        routed.append(pct)
        return pct != 50  # the router always refuses 50%

    sm = blue_green(clock=clock, rec=rec, route_traffic=route)

    await bg.run_blue_green(sm)

    assert names(sm)[-3:] == ["testing_green", "rolling_back", "rolled_back"]
    assert sm.get_context()["traffic_percentage"] == 0
    # three attempts, each rolled back; then the deployment's rollback routes 0% again
    assert routed == [10, 20, 30, 40, 50, 0] * 3 + [0]
    assert rec.kind("rollback") == ["Reverting traffic to blue"] * 3 + [
        "Routing all traffic back to blue"
    ]
    reason = sm.get_history()[-1].data["payload"]["reason"]
    assert "all 3 attempts failed" in reason
    m = sm.get_metrics()
    # three traffic switch attempts plus the deployment's rollback
    assert (m.total_attempts, m.total_retries, m.total_rollbacks) == (4, 2, 3)
    assert len(rec.delays_s) == 2
    assert 4.0 <= rec.delays_s[0] <= 6.0  # 5 s +-20%
    assert 8.0 <= rec.delays_s[1] <= 12.0  # 10 s +-20%
    # 4 one-second steps per attempt, plus the two retry delays
    assert clock.elapsed == pytest.approx(3 * 4.0 + sum(rec.delays_s))


async def test_a_failing_rollback_is_retried_then_stays_in_rolling_back() -> None:
    clock = VirtualClock()
    rec = Recorder()
    torn_down: list[str] = []
    sm = blue_green(
        clock=clock,
        rec=rec,
        health_check=always(False),
        route_traffic=lambda ctx, pct: pct != 0,  # the router refuses to go back to blue
        teardown_green=lambda ctx: torn_down.append(ctx["green_version"]),
    )

    await bg.run_blue_green(sm)

    assert sm.get_state().name == "rolling_back"
    assert (sm.status, sm.is_final()) == ("active", False)
    assert sm.available_events() == ["ROLLBACK"]  # an operator can try again
    assert rec.kind("rollback") == ["Routing all traffic back to blue"] * 3
    assert torn_down == []  # green is not torn down while it still takes traffic
    assert sm.get_context()["traffic_percentage"] == 100
    assert len(rec.delays_s) == 2


async def test_transient_traffic_failure_is_rolled_back_and_retried() -> None:
    clock = VirtualClock()
    rec = Recorder()
    failures = iter([True])

    async def route(ctx: bg.BlueGreenContext, pct: int) -> None:
        if pct == 60 and next(failures, False):
            raise ConnectionError("load balancer returned 503")

    sm = blue_green(clock=clock, rec=rec, route_traffic=route, health_check=always(True))

    await bg.run_blue_green(sm)

    assert sm.get_state().name == "completed"
    assert sm.get_context()["traffic_percentage"] == 100
    switching = sm.get_history()[4]
    assert (switching.name, switching.attempts) == ("switching_traffic", 2)
    assert rec.kind("rollback") == ["Reverting traffic to blue"]
    assert len(rec.delays_s) == 1
    assert clock.elapsed == pytest.approx(5.0 + rec.delays_s[0] + 10.0 + 300.0)


async def test_blue_green_is_deterministic_for_a_seed() -> None:
    async def run() -> dict[str, Any]:
        sm = blue_green(clock=VirtualClock(), seed=99)
        await bg.run_blue_green(sm)
        return (await sm.serialize()).to_dict()

    first, second = await run(), await run()
    assert first == second
    assert json.loads(json.dumps(first)) == first  # the snapshot (context too) is JSON-safe
    assert first["current_state"]["name"] in ("completed", "rolled_back")


async def test_driver_resumes_a_rehydrated_machine() -> None:
    clock = VirtualClock()
    sm = blue_green(clock=clock, health_check=always(True))
    for event in ("START", "GREEN_READY", "DEPLOYED"):
        assert (await sm.dispatch(event)).success
    snapshot = (await sm.serialize()).to_json()

    resumed = blue_green(clock=clock, health_check=always(True))
    await resumed.rehydrate(snapshot)
    await bg.run_blue_green(resumed)

    assert names(resumed) == [*names(sm), "switching_traffic", "monitoring", "completed"]
    assert resumed.get_context()["health_checks_passed"] == 5
    assert clock.elapsed == 310.0


async def test_async_health_check_is_awaited() -> None:
    calls: list[int] = []

    async def check(ctx: bg.BlueGreenContext) -> bool:
        calls.append(ctx["health_checks_passed"])
        return True

    sm = blue_green(clock=VirtualClock(), health_check=check)
    await bg.run_blue_green(sm)
    assert sm.get_state().name == "completed"
    assert calls == [0, 1, 2, 3, 4]


# -- canary ----------------------------------------------------------------------------


def good_metrics(ctx: cn.CanaryContext, pct: int) -> tuple[float, float]:
    return 0.005, 120.0


async def test_canary_happy_path() -> None:
    clock = VirtualClock()
    rec = Recorder()
    sm = canary(clock=clock, rec=rec, metrics=good_metrics)

    await cn.run_canary(sm)

    assert names(sm) == [
        "idle",
        "deploying_canary",
        "monitoring_10_percent",
        "monitoring_50_percent",
        "monitoring_100_percent",
        "completed",
    ]
    assert events(sm)[-1] == "METRICS_GOOD_100"
    ctx = sm.get_context()
    assert (ctx["traffic_percentage"], ctx["error_rate"], ctx["latency_p99"]) == (100, 0.005, 120.0)
    assert [s.data.get("message") for s in sm.get_history()[2:]] == [
        "Metrics healthy at 10%",
        "Metrics healthy at 50%",
        "Metrics healthy at 100%",
    ]
    assert clock.elapsed == 3 * 300.0


async def test_bad_canary_step_is_rolled_back_to_zero_and_aborted() -> None:
    clock = VirtualClock()
    rec = Recorder()
    seen: list[int] = []

    def metrics(ctx: cn.CanaryContext, pct: int) -> tuple[float, float]:
        seen.append(ctx["traffic_percentage"])
        return (0.05 if pct == 50 else 0.001), 110.0  # 5% errors at the 50% step

    sm = canary(clock=clock, rec=rec, metrics=metrics)

    await cn.run_canary(sm)

    assert names(sm)[-2:] == ["monitoring_10_percent", "aborted"]
    assert events(sm)[-1] == "METRICS_BAD"
    assert seen == [10, 50]  # the bad step really sent 50% before it was judged
    assert sm.get_context()["traffic_percentage"] == 0
    assert rec.kind("rollback") == ["Aborting canary, reverting to 0%"]
    assert "Error rate 5.00% exceeds threshold" in sm.get_state().data["payload"]["reason"]
    m = sm.get_metrics()
    assert (m.total_retries, m.total_rollbacks) == (0, 1)  # can_retry=False
    assert clock.elapsed == 2 * 300.0


async def test_high_latency_at_full_traffic_aborts() -> None:
    clock = VirtualClock()
    sm = canary(
        clock=clock, rec=Recorder(), metrics=lambda ctx, pct: (0.001, 200.0 if pct == 100 else 90.0)
    )
    await cn.run_canary(sm)
    assert names(sm)[-2:] == ["monitoring_50_percent", "aborted"]
    assert "Latency 200ms exceeds threshold" in sm.get_state().data["payload"]["reason"]
    assert sm.get_context()["traffic_percentage"] == 0
    assert clock.elapsed == 3 * 300.0


async def test_bad_first_canary_step_fails_the_machine() -> None:
    # The seed's METRICS_BAD does not leave deploying_canary: the driver fails the machine.
    sm = canary(clock=VirtualClock(), rec=Recorder(), metrics=lambda ctx, pct: (0.5, 100.0))
    await cn.run_canary(sm)
    assert sm.get_state().name == "deploying_canary"
    assert sm.status == "failed"
    assert sm.get_context()["traffic_percentage"] == 0


async def test_canary_is_deterministic_for_a_seed() -> None:
    async def run() -> dict[str, Any]:
        config = cn.canary_config(clock=VirtualClock(), random=random.Random(7))
        sm = create_state_machine(config, cn.new_canary_context())
        await cn.run_canary(sm)
        return (await sm.serialize()).to_dict()

    assert await run() == await run()
