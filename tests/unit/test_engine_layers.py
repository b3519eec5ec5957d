"""The engine's layers: its durable state is one value that only the engine assigns,
and the runtimes (worker, CLI) use a machine's public methods only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import deploysm
from deploysm.core._head import Head
from deploysm.examples.simple import simple_config

PKG = Path(deploysm.__file__).parent
# the engine's durable value and the private views of its parts
VALUE = {"_head"} | {f"_{name}" for name in Head._fields} | {"_state", "_ctx"}
RUNTIMES = ("runtime/*.py", "cli/*.py")
# the engine's own modules: the machine (its value's one assignment, ``_put``) and the
# StateMachine built on it
ENGINE = {"engine/_machine.py", "engine/_engine.py"}


def value_assignments(root: Path) -> list[str]:
    """``m._state = ...`` and the like: an assignment to a part of a machine's value
    outside the engine's own module."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in ENGINE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if (
                        isinstance(sub, ast.Attribute)
                        and sub.attr in VALUE
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id in ("m", "sm", "machine")
                    ):
                        found.append(f"{path.name}:{node.lineno} {sub.value.id}.{sub.attr}")
    return found


def private_reads(root: Path) -> list[str]:
    """A runtime module reaching into a machine's private fields (``sm._x``)."""
    found = []
    for pattern in RUNTIMES:
        for path in sorted(root.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            for n, line in enumerate(text.splitlines(), 1):
                found += [f"{path.name}:{n} {m}" for m in re.findall(r"\bsm\._\w+", line)]
    return found


def test_only_the_engine_assigns_a_machines_value() -> None:
    assert len(list(PKG.rglob("*.py"))) > 50  # the checks read the whole package
    assert value_assignments(PKG) == []


def test_the_runtimes_use_a_machines_public_methods_only() -> None:
    assert len([p for g in RUNTIMES for p in PKG.glob(g)]) > 10
    assert private_reads(PKG) == []


def test_the_checks_find_a_planted_violation(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "engine" / "_runner.py").write_text("def f(m):\n    m._head = None\n")
    (tmp_path / "runtime" / "_worker.py").write_text("def g(sm):\n    return sm._store\n")
    assert value_assignments(tmp_path) == ["_runner.py:2 m._head"]
    assert private_reads(tmp_path) == ["_worker.py:2 sm._store"]


def test_the_value_is_immutable() -> None:
    head = deploysm.create_state_machine(simple_config(), {})._head
    try:
        head.status = "failed"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("a Head can be changed in place")
