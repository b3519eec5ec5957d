"""The seed's basic example: validate, deploy, complete.

::

    sm = create_state_machine(simple_config(), new_simple_context(123, 456))
    await run_simple(sm)
    assert sm.get_state().name == "completed"
"""

from __future__ import annotations

import logging
import random as _random
from typing import Any, Literal, TypedDict, get_args

from .. import (
    Clock,
    EffectResult,
    Hooks,
    State,
    StateMachine,
    StateMachineConfig,
    Transition,
    default_retry_policy,
    effect,
)
from ._support import Progress, log_progress

__all__ = [
    "EVENTS",
    "STATES",
    "DeployContext",
    "DeployEvent",
    "DeployState",
    "SimpleMachine",
    "new_simple_context",
    "run_simple",
    "simple_config",
]

DeployState = Literal["idle", "validating", "deploying", "completed", "failed"]
DeployEvent = Literal["START", "VALIDATED", "DEPLOYED", "FAIL"]
STATES: tuple[DeployState, ...] = get_args(DeployState)
EVENTS: tuple[DeployEvent, ...] = get_args(DeployEvent)


class DeployContext(TypedDict):
    deployment_id: int
    project_id: int
    logs: list[str]


SimpleMachine = StateMachine[DeployState, DeployEvent, DeployContext]

logger = logging.getLogger("deploysm.examples")


def new_simple_context(deployment_id: int = 123, project_id: int = 456) -> DeployContext:
    return {"deployment_id": deployment_id, "project_id": project_id, "logs": []}


def _default_hooks() -> Hooks:
    def on_state_enter(state: State[Any], ctx: DeployContext) -> None:
        logger.info("Entered state: %s", state.name)

    def on_error(error: BaseException, state: State[Any], ctx: DeployContext) -> None:
        logger.error("Error in %s: %s", state.name, error)

    return Hooks(on_state_enter=on_state_enter, on_error=on_error)


def simple_config(
    *,
    hooks: Hooks | None = None,
    progress: Progress | None = None,
    clock: Clock | None = None,
    random: _random.Random | None = None,
) -> StateMachineConfig[DeployState, DeployEvent, DeployContext]:
    """The seed's ``deployment-workflow``; effects note what they do in ``ctx["logs"]``."""
    report = progress if progress is not None else log_progress

    def validate(ctx: DeployContext, state: State[Any]) -> EffectResult:
        line = f"Validating deployment {ctx['deployment_id']}"
        ctx["logs"].append(line)
        report("step", line)
        return EffectResult(True, "Validation passed")

    def deploy(ctx: DeployContext, state: State[Any]) -> EffectResult:
        line = f"Deploying {ctx['project_id']}"
        ctx["logs"].append(line)
        report("step", line)
        return EffectResult(True, "Deployed")

    def undeploy(ctx: DeployContext, state: State[Any]) -> None:
        line = f"Rolling back deployment {ctx['deployment_id']}"
        ctx["logs"].append(line)
        report("rollback", line)

    validation_effect = effect().execute(validate).set_idempotent(True).build()
    deploy_effect = effect().execute(deploy).rollback(undeploy).set_idempotent(False).build()

    transitions: list[Transition[DeployState, DeployEvent]] = [
        Transition("idle", "validating", "START"),
        Transition("validating", "deploying", "VALIDATED"),
        Transition("deploying", "completed", "DEPLOYED"),
        Transition(["validating", "deploying"], "failed", "FAIL"),
    ]
    return StateMachineConfig(
        id="deployment-workflow",
        initial_state="idle",
        states=STATES,
        events=EVENTS,
        transitions=transitions,
        effects={"validating": validation_effect, "deploying": deploy_effect},
        retry_policy=default_retry_policy.replace(max_attempts=3),
        hooks=hooks if hooks is not None else _default_hooks(),
        clock=clock,
        random=random,
    )


async def run_simple(machine: SimpleMachine) -> SimpleMachine:
    """START, VALIDATED, DEPLOYED; on a failed step, FAIL. Returns the machine.

    Reaching a final state completes the machine (the seed's ``sm.complete()``)."""
    steps: dict[str, DeployEvent] = {
        "idle": "START",
        "validating": "VALIDATED",
        "deploying": "DEPLOYED",
    }
    while machine.status == "active" and not machine.is_final():
        result = await machine.dispatch(steps[machine.get_state().name])
        if not result.success:
            if "FAIL" in machine.available_events():
                await machine.dispatch({"type": "FAIL", "payload": {"reason": str(result.error)}})
            break
    return machine
