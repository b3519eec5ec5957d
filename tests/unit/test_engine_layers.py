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
RUNTIMES = ("_worker.py", "_worker_exits.py", "_leased.py", "_cli*.py")


def value_assignments(root: Path) -> list[str]:
    """``m._state = ...`` and the like: an assignment to a part of a machine's value
    outside the engine's own module."""
    found = []
    for path in sorted(root.glob("*.py")):
        if path.name == "_engine.py":
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
    assert value_assignments(PKG) == []


def test_the_runtimes_use_a_machines_public_methods_only() -> None:
    assert private_reads(PKG) == []


def test_the_value_is_immutable() -> None:
    head = deploysm.create_state_machine(simple_config(), {})._head
    try:
        head.status = "failed"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("a Head can be changed in place")
