"""Configs for ``deploysm validate`` in ``test_cli_status``.

``compensating``: a workflow whose ``rolled_back`` state is reached by ``compensate()``
only (its ``compensated_state``), never by a transition. ``broken``: a factory whose
``StateMachineConfig`` is refused when built (a failure state that is not final).
"""

from __future__ import annotations

from typing import Any

import deploysm

T = deploysm.Transition


def _undo(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
    return None


def compensating() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    deploy = deploysm.effect().execute(_undo).rollback(_undo).build()
    return deploysm.StateMachineConfig(
        id="compensating",
        initial_state="idle",
        states=["idle", "deploying", "done", "rolled_back"],
        events=["GO", "DONE"],
        transitions=[T("idle", "deploying", "GO"), T("deploying", "done", "DONE")],
        effects={"deploying": deploy},
        compensated_state="rolled_back",
    )


def broken() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    return deploysm.StateMachineConfig(
        id="broken",
        initial_state="idle",
        states=["idle", "deploying", "failed"],
        events=["GO", "FAIL"],
        transitions=[T("idle", "deploying", "GO"), T("deploying", "failed", "FAIL")],
        failure_states=["deploying"],
    )
