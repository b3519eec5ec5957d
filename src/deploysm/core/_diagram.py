"""Export a workflow definition as a Mermaid ``stateDiagram-v2`` or as Graphviz DOT.

``source`` is a config (dataclass or mapping) or a machine (``.config`` and
``get_state()``), whose state is highlighted unless ``current_state`` is given.
Output is deterministic: states and edges in declaration order.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from ._config import StateMachineConfig, Transition, coerce_config
from ._errors import ErrorCode, StateMachineError
from ._validation import check_errors, final_states_of

__all__ = ["to_dot", "to_mermaid"]


class _Machine(Protocol):
    @property
    def config(self) -> StateMachineConfig[Any, Any, Any]: ...

    def get_state(self) -> Any: ...


Source = StateMachineConfig[Any, Any, Any] | Mapping[str, Any] | _Machine

_CURRENT_FILL, _EFFECT_COLOR = "#ffd966", "#d9822b"
_CLASSDEF_CURRENT = f"classDef current fill:{_CURRENT_FILL},stroke:#7f6000,stroke-width:2px"
_CLASSDEF_EFFECT = f"classDef effect stroke:{_EFFECT_COLOR},stroke-width:2px,stroke-dasharray:5 3"


class _Edge(NamedTuple):
    source: str
    target: str
    label: str


class _Graph(NamedTuple):
    id: str
    states: tuple[str, ...]
    initial: str
    finals: frozenset[str]
    edges: tuple[_Edge, ...]
    effects: frozenset[str]  # states entered through a non-idempotent effect
    current: str | None


def to_mermaid(source: Source, *, current_state: str | None = None) -> str:
    """The definition as a Mermaid ``stateDiagram-v2``. A name that is not a plain
    identifier (or is a Mermaid keyword) gets an alias: ``state "needs review" as s3``.
    The current state has class ``current``; states entered through a non-idempotent
    effect have class ``effect``."""
    g = _graph(source, current_state)
    ids = _mermaid_ids(g.states)
    lines = ["stateDiagram-v2"]
    if g.current is not None:
        lines.append(_CLASSDEF_CURRENT)
    if g.effects:
        lines.append(_CLASSDEF_EFFECT)
    mentioned = {g.initial} | g.finals | {s for e in g.edges for s in (e.source, e.target)}
    for state in g.states:
        if ids[state] != state:
            lines.append(f'state "{_mermaid_text(state, state_label=True)}" as {ids[state]}')
        elif state not in mentioned:
            lines.append(state)
    lines.append(f"[*] --> {ids[g.initial]}")
    lines.extend(f"{ids[e.source]} --> {ids[e.target]}: {_mermaid_text(e.label)}" for e in g.edges)
    lines.extend(f"{ids[s]} --> [*]" for s in g.states if s in g.finals)
    marked = [ids[s] for s in g.states if s in g.effects]
    if marked:
        lines.append(f"class {','.join(marked)} effect")
    if g.current is not None:
        lines.append(f"class {ids[g.current]} current")
    return "\n".join(lines[:1] + ["    " + line for line in lines[1:]]) + "\n"


def to_dot(source: Source, *, current_state: str | None = None) -> str:
    """The definition as a Graphviz ``digraph``: the initial state entered from a point,
    final states double circles, the current state filled, states entered through a
    non-idempotent effect with an orange border."""
    g = _graph(source, current_state)
    start = "__start__"
    while start in g.states:
        start = f"_{start}_"
    lines = [
        f"digraph {_dot_quote(g.id)} {{",
        "rankdir=LR;",
        "node [shape=box, style=rounded];",
        f"{_dot_quote(start)} [shape=point];",
    ]
    for state in g.states:
        attrs: list[str] = []
        if state in g.finals:
            attrs.append("shape=doublecircle")
        if state == g.current:
            attrs.append(f'style="rounded,filled", fillcolor="{_CURRENT_FILL}"')
        if state in g.effects:
            attrs.append(f'color="{_EFFECT_COLOR}", penwidth=2')
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"{_dot_quote(state)}{suffix};")
    lines.append(f"{_dot_quote(start)} -> {_dot_quote(g.initial)};")
    lines.extend(
        f"{_dot_quote(e.source)} -> {_dot_quote(e.target)} [label={_dot_quote(e.label)}];"
        for e in g.edges
    )
    return "\n".join(lines[:1] + ["  " + line for line in lines[1:]] + ["}"]) + "\n"


def _graph(source: object, current_state: str | None) -> _Graph:
    raw = source
    if (
        not isinstance(source, StateMachineConfig | Mapping)
        and hasattr(source, "config")
        and callable(getattr(source, "get_state", None))
    ):
        raw = source.config
        if current_state is None:
            current_state = _machine_state(source)
    cfg, problems = coerce_config(raw)
    if cfg is not None:
        problems = problems + check_errors(cfg)
    if cfg is None or problems:
        raise StateMachineError(
            "cannot draw an invalid workflow definition: " + "; ".join(problems),
            ErrorCode.INVALID_CONFIG,
            problems=problems,
        )
    states = tuple(cfg.states)
    if current_state is not None and current_state not in states:
        raise StateMachineError(
            f"current_state {current_state!r} is not one of the states", state=current_state
        )
    effects = {s for s, eff in (cfg.effects or {}).items() if not eff.idempotent}
    edges: dict[_Edge, None] = {}  # an ordered set
    for t in cfg.transitions:
        assert isinstance(t, Transition)  # coerce_config made them all Transitions
        label = t.event if t.guard is None else f"{t.event} [{_guard_name(t.guard)}]"
        if t.effect is not None and not t.effect.idempotent:
            effects.add(t.to)
        for src in t.sources:
            edges.setdefault(_Edge(src, t.to, label), None)
    finals, initial = final_states_of(cfg), cfg.initial_state
    return _Graph(cfg.id, states, initial, finals, tuple(edges), frozenset(effects), current_state)


def _machine_state(machine: Any) -> str:
    state = machine.get_state()
    if inspect.iscoroutine(state):
        state.close()
        raise TypeError("the machine's get_state() is async; pass current_state= explicitly")
    name = getattr(state, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"get_state() must return a state with a str .name, got {state!r}")
    return name


def _guard_name(guard: object) -> str:
    name = getattr(guard, "__name__", None)
    return name if isinstance(name, str) and name and name != "<lambda>" else "guard"


# -- Mermaid ----------------------------------------------------------------

_PLAIN_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Words the state-diagram lexer reads as keywords (case-insensitively), and the
# ids it makes up itself for [*] (start1, end2) and the root document.
_KEYWORDS = frozenset(
    {"as", "class", "classdef", "click", "end", "hide", "href", "left", "note", "of", "right"}
    | {"root", "scale", "state", "statediagram", "style", "acctitle", "accdescr"}
)
_RESERVED = re.compile(r"default.*|.*direction.*|(start|end)\d+|root_(start|end)", re.IGNORECASE)
# Mermaid turns ``#<digits>;`` into that character; raw ``" # ; : %`` and some
# markup would end or comment out a statement.
_MERMAID_SPECIAL = frozenset('"#;:%<>&`')
_DIRECTION = re.compile(r"(directio)(n)", re.IGNORECASE)  # ".*direction\s+LR" is a statement


def _mermaid_ids(states: tuple[str, ...]) -> dict[str, str]:
    ids = {s: s for s in states if _is_plain(s)}
    taken = set(ids)
    for i, state in enumerate(states):
        if state not in ids:
            alias = f"s{i}"
            while alias in taken:
                alias += "_"
            ids[state] = alias
            taken.add(alias)
    return ids


def _is_plain(name: str) -> bool:
    return (
        _PLAIN_ID.fullmatch(name) is not None
        and name.lower() not in _KEYWORDS
        and _RESERVED.fullmatch(name) is None
    )


def _mermaid_text(text: str, *, state_label: bool = False) -> str:
    special = _MERMAID_SPECIAL | {"[", "]"} if state_label else _MERMAID_SPECIAL
    out: list[str] = []
    for i, ch in enumerate(text):
        trimmed = ch.isspace() and i in (0, len(text) - 1)  # Mermaid strips outer spaces
        if ch == "\n":
            out.append("<br>")
        elif ch in special or ord(ch) < 32 or ord(ch) == 127 or trimmed:
            out.append(f"#{ord(ch)};")
        else:
            out.append(ch)
    return _DIRECTION.sub(r"\g<1>#110;", "".join(out))


# -- DOT --------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'
