"""The generic API type-checks Literal state and event aliases (mypy --strict, real run)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

GOOD = """
from typing import Literal, TypedDict

import deploysm
from deploysm import StateMachineConfig, Transition

S = Literal["idle", "running", "done"]
E = Literal["GO", "FINISH"]


class Ctx(TypedDict):
    n: int


config: StateMachineConfig[S, E, Ctx] = StateMachineConfig(
    id="typed",
    initial_state="idle",
    states=["idle", "running", "done"],
    events=["GO", "FINISH"],
    transitions=[Transition("idle", "running", "GO"), Transition("running", "done", "FINISH")],
)


async def main() -> None:
    sm: deploysm.StateMachine[S, E, Ctx] = deploysm.create_state_machine(config, {"n": 1})
    result = await sm.dispatch("GO")
    name: S = result.new_state.name
    ctx: Ctx = sm.get_context()
    print(name, ctx["n"])
"""

BAD_STATE = GOOD.replace('initial_state="idle"', 'initial_state="idel"')
BAD_EVENT = GOOD.replace('await sm.dispatch("GO")', 'await sm.dispatch("GOO")')


def _check(tmp_path: Path, source: str) -> tuple[str, int]:
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(source))
    out, err, status = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)])
    return out + err, status


def test_literal_aliases_type_check(tmp_path: Path) -> None:
    out, status = _check(tmp_path, GOOD)
    assert status == 0, out


def test_a_misspelt_state_is_a_type_error(tmp_path: Path) -> None:
    out, status = _check(tmp_path, BAD_STATE)
    assert status == 1 and "'idel'" in out, out


def test_a_misspelt_event_is_a_type_error(tmp_path: Path) -> None:
    out, status = _check(tmp_path, BAD_EVENT)
    assert status == 1 and "'GOO'" in out, out
