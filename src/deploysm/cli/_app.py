"""``start --app`` and ``send --app``: check the workflow name and the event against the
definitions the workers run (the same ``module:attr`` as ``worker --app``) before
anything is written."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..core._definition import Definition, compile_config
from ..core._errors import ErrorCode, StateMachineError
from ..stores import Store
from ._base import CliError, one_line
from ._db import quiet_logs

__all__ = ["add_app_arg", "check_event", "check_workflow"]


def add_app_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the workflows (the MODULE:ATTR the workers run): check the workflow name and "
        "event against them before writing (default: none, nothing is checked)",
    )


def check_workflow(app: Mapping[str, Any], target: str, workflow: str) -> Definition:
    """The definition of ``workflow`` in ``app``; ``UNKNOWN_WORKFLOW`` naming the known
    ones if it has none."""
    if workflow not in app:
        known = ", ".join(sorted(map(str, app))) or "none"
        raise CliError(
            f"unknown workflow {workflow!r}: --app {target} has {known}",
            code=ErrorCode.UNKNOWN_WORKFLOW,
        )
    source = app[workflow]
    quiet_logs()  # a config's warnings are validate's business, not start's
    try:
        return compile_config(source() if callable(source) else source)
    except StateMachineError as e:
        raise CliError(f"--app {target}: workflow {workflow!r}: {e}", code=e.code) from None
    except Exception as e:
        raise CliError(f"--app {target}: workflow {workflow!r}: {one_line(e)}") from None


async def check_event(
    store: Store, app: Mapping[str, Any], target: str, machine_id: str, event: str
) -> str | None:
    """Refuse an event the machine's workflow does not have (``INVALID_EVENT``, listing
    the events it has). For one it has that the current state does not take, the note
    to print (the machine may reach a state that takes it before a worker delivers it)."""
    info = next((i for i in await store.list() if i.machine_id == machine_id), None)
    if info is None:
        raise StateMachineError(f"machine {machine_id!r} not found", ErrorCode.UNKNOWN_MACHINE)
    definition = check_workflow(app, target, info.workflow or info.definition_id)
    snap = await store.load(machine_id)
    state = snap.current_state.name if snap is not None else definition.initial
    takes = [e for e in definition.events if e in definition.index.get(state, {})]
    accepts = f"its state {state} takes {', '.join(takes) or 'no event'}"
    if event not in definition.event_set:
        raise CliError(
            f"unknown event {event!r} for {machine_id} ({definition.id}): its events are "
            f"{', '.join(definition.events)}; {accepts}",
            code=ErrorCode.INVALID_EVENT,
        )
    if event in takes:
        return None
    return (
        f"{accepts}, not {event}: a worker delivers events in order and refuses {event} "
        f"if the machine is still there (see: deploysm history {machine_id})"
    )
