"""Mermaid and Graphviz DOT export of workflow definitions (deploysm.core._diagram)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploysm.core._config import StateMachineConfig, Transition, coerce_config
from deploysm.core._diagram import to_dot, to_mermaid
from deploysm.core._effects import effect
from deploysm.core._errors import StateMachineError

STATES = [
    "idle",
    "preparing_green",
    "deploying_green",
    "testing_green",
    "switching_traffic",
    "monitoring",
    "completed",
    "rolling_back",
]
EVENTS = [
    "START",
    "GREEN_READY",
    "DEPLOYED",
    "TESTS_PASSED",
    "TRAFFIC_SWITCHED",
    "HEALTH_OK",
    "HEALTH_FAIL",
    "ROLLBACK",
]


def blue_green(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "id": "blue-green",
        "initial_state": "idle",
        "states": list(STATES),
        "events": list(EVENTS),
        "transitions": [
            {"from": "idle", "to": "preparing_green", "event": "START"},
            {"from": "preparing_green", "to": "deploying_green", "event": "GREEN_READY"},
            {"from": "deploying_green", "to": "testing_green", "event": "DEPLOYED"},
            {"from": "testing_green", "to": "switching_traffic", "event": "TESTS_PASSED"},
            {"from": "switching_traffic", "to": "monitoring", "event": "TRAFFIC_SWITCHED"},
            {"from": "monitoring", "to": "completed", "event": "HEALTH_OK"},
            {
                "from": ["testing_green", "switching_traffic", "monitoring"],
                "to": "rolling_back",
                "event": "HEALTH_FAIL",
            },
        ],
    }
    cfg.update(overrides)
    return cfg


EXPECTED_MERMAID_EDGES = [
    "[*] --> idle",
    "idle --> preparing_green: START",
    "preparing_green --> deploying_green: GREEN_READY",
    "deploying_green --> testing_green: DEPLOYED",
    "testing_green --> switching_traffic: TESTS_PASSED",
    "switching_traffic --> monitoring: TRAFFIC_SWITCHED",
    "monitoring --> completed: HEALTH_OK",
    "testing_green --> rolling_back: HEALTH_FAIL",
    "switching_traffic --> rolling_back: HEALTH_FAIL",
    "monitoring --> rolling_back: HEALTH_FAIL",
    "completed --> [*]",
    "rolling_back --> [*]",
]

EXPECTED_DOT_EDGES = [
    '"__start__" -> "idle";',
    '"idle" -> "preparing_green" [label="START"];',
    '"preparing_green" -> "deploying_green" [label="GREEN_READY"];',
    '"deploying_green" -> "testing_green" [label="DEPLOYED"];',
    '"testing_green" -> "switching_traffic" [label="TESTS_PASSED"];',
    '"switching_traffic" -> "monitoring" [label="TRAFFIC_SWITCHED"];',
    '"monitoring" -> "completed" [label="HEALTH_OK"];',
    '"testing_green" -> "rolling_back" [label="HEALTH_FAIL"];',
    '"switching_traffic" -> "rolling_back" [label="HEALTH_FAIL"];',
    '"monitoring" -> "rolling_back" [label="HEALTH_FAIL"];',
]


class FakeMachine:
    """The duck-typed shape the exporters accept as a running machine."""

    def __init__(self, config: StateMachineConfig[Any, Any, Any], state: str) -> None:
        self.config = config
        self._state = state
        self.calls = 0

    def get_state(self) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(name=self._state, data={}, version=1)


def as_dataclass(raw: dict[str, Any]) -> StateMachineConfig[Any, Any, Any]:
    cfg, problems = coerce_config(raw)
    assert cfg is not None and not problems
    return cfg


def body(text: str) -> list[str]:
    """The lines of an output, without indentation."""
    return [line.strip() for line in text.splitlines()]


# -- a checker for the subset of Mermaid the exporter emits ----------------------

_ID = r"[A-Za-z][A-Za-z0-9_]*"
# Text may only hold numeric entities (#59;) and characters that end no Mermaid token.
_TEXT = r"(?:[^\"#;:%<>&`\n]|#\d+;|<br>)+"
_MERMAID_LINES = [
    re.compile(p)
    for p in (
        r"classDef (current|effect) [^\n;#]*(#[0-9a-f]{6}[^\n;#]*)*",
        rf"state \"(?P<label>{_TEXT})\" as (?P<alias>{_ID})",
        rf"(?P<bare>{_ID})",
        rf"\[\*\] --> (?P<initial>{_ID})",
        rf"(?P<final>{_ID}) --> \[\*\]",
        rf"(?P<src>{_ID}) --> (?P<dst>{_ID}): (?P<edge>{_TEXT})",
        rf"class {_ID}(,{_ID})* (current|effect)",
    )
]


# Ids Mermaid's state-diagram lexer reads as something else (keywords, "default..."
# and "...direction..." prefixes, the ids it makes up for [*]), case-insensitively.
_NOT_AN_ID = re.compile(
    r"(class|classdef|state|note|style|click|href|scale|hide|acctitle|accdescr|statediagram"
    r"|end|root|start\d+|end\d+|root_start|root_end)|default.*|.*direction.*",
    re.IGNORECASE,
)


def _decode(text: str) -> str:
    text = text.replace("<br>", "\n")
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), text)


def parse_mermaid(text: str) -> dict[str, Any]:
    """Check every line against the emitted grammar; return the names it declares."""
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert text.endswith("\n")
    names: dict[str, str] = {}  # mermaid id -> state name
    used: set[str] = set()
    edges: list[tuple[str, str, str]] = []
    for raw in lines[1:]:
        assert raw.startswith("    ") and not raw.startswith("     "), raw
        line = raw[4:]
        match = next((m for p in _MERMAID_LINES if (m := p.fullmatch(line))), None)
        assert match is not None, f"unexpected Mermaid line: {line!r}"
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        for key in ("label", "edge"):  # Mermaid would trim outer whitespace away
            assert groups.get(key, "x") == groups.get(key, "x").strip(), line
        if "alias" in groups:
            label = groups["label"]
            # "[[fork]]" and "direction LR" are statements even inside a state label
            assert "[" not in label and not re.search("direction", label, re.I), label
            assert groups["alias"] not in names
            names[groups["alias"]] = _decode(label)
        if "edge" in groups:
            assert not re.search("direction", groups["edge"], re.I), groups["edge"]
            edges.append((groups["src"], groups["dst"], _decode(groups["edge"])))
        for key in ("bare", "initial", "final", "src", "dst", "alias"):
            if key in groups:
                assert not _NOT_AN_ID.fullmatch(groups[key]), line
                used.add(groups[key])
    for ident in used - names.keys():
        names[ident] = ident
    return {"names": names, "edges": edges}


def dot_quote(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def check_with_graphviz(dot_text: str, expected_nodes: int) -> None:
    """If Graphviz is installed, prove the DOT parses and has the expected nodes."""
    dot = shutil.which("dot")
    if dot is None:
        return
    out = subprocess.run(
        [dot, "-Tplain"], input=dot_text.encode(), capture_output=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr.decode()
    nodes = [line for line in out.stdout.decode().splitlines() if line.startswith("node ")]
    assert len(nodes) == expected_nodes + 1  # + the point node the initial edge starts from


# -- Mermaid -------------------------------------------------------------------


def test_mermaid_blue_green_edges_in_declaration_order() -> None:
    text = to_mermaid(blue_green())
    lines = body(text)
    assert lines[0] == "stateDiagram-v2"
    assert [line for line in lines if "-->" in line] == EXPECTED_MERMAID_EDGES
    # plain names are used as they are: no aliases, no declarations, no styling
    assert not any(line.startswith(("state ", "class", "classDef")) for line in lines)
    parsed = parse_mermaid(text)
    assert sorted(parsed["names"].values()) == sorted(STATES)


def test_mermaid_multi_source_transition_gives_one_edge_per_source() -> None:
    lines = body(to_mermaid(blue_green()))
    fails = [line for line in lines if line.endswith(": HEALTH_FAIL")]
    assert fails == [
        "testing_green --> rolling_back: HEALTH_FAIL",
        "switching_traffic --> rolling_back: HEALTH_FAIL",
        "monitoring --> rolling_back: HEALTH_FAIL",
    ]


def test_mermaid_initial_and_final_markers() -> None:
    lines = body(to_mermaid(blue_green()))
    assert [line for line in lines if line.startswith("[*] -->")] == ["[*] --> idle"]
    assert [line for line in lines if line.endswith("--> [*]")] == [
        "completed --> [*]",
        "rolling_back --> [*]",
    ]
    explicit = body(to_mermaid(blue_green(final_states=["completed"])))
    assert [line for line in explicit if line.endswith("--> [*]")] == ["completed --> [*]"]


def test_mermaid_highlights_only_the_current_state() -> None:
    lines = body(to_mermaid(blue_green(), current_state="monitoring"))
    assert sum(line.startswith("classDef current ") for line in lines) == 1
    assert [line for line in lines if line.endswith(" current")] == ["class monitoring current"]
    assert lines[-1] == "class monitoring current"
    plain = body(to_mermaid(blue_green()))
    assert not any("current" in line for line in plain)


def test_mermaid_unreachable_state_is_still_declared() -> None:
    cfg = blue_green(states=[*STATES, "paused"], final_states=["completed", "rolling_back"])
    text = to_mermaid(cfg)
    assert "    paused\n" in text
    assert "paused" in parse_mermaid(text)["names"]


def test_mermaid_guard_label_uses_the_guard_name() -> None:
    def canary_healthy(ctx: Any, event: Any) -> bool:
        return True

    cfg = blue_green()
    cfg["transitions"] = [
        {**cfg["transitions"][0], "guard": canary_healthy},
        {**cfg["transitions"][1], "guard": lambda ctx, ev: True},
        *cfg["transitions"][2:],
    ]
    lines = body(to_mermaid(cfg))
    assert "idle --> preparing_green: START [canary_healthy]" in lines
    assert "preparing_green --> deploying_green: GREEN_READY [guard]" in lines
    dot_lines = body(to_dot(cfg))
    assert '"idle" -> "preparing_green" [label="START [canary_healthy]"];' in dot_lines
    assert '"preparing_green" -> "deploying_green" [label="GREEN_READY [guard]"];' in dot_lines


def test_non_idempotent_effects_are_marked() -> None:
    deploy = effect().execute(lambda ctx, state: None).build()
    probe = effect().execute(lambda ctx, state: None).set_idempotent().build()
    cfg = blue_green(effects={"deploying_green": deploy, "testing_green": probe})
    cfg["transitions"][4] = {**cfg["transitions"][4], "effect": deploy}  # -> monitoring
    lines = body(to_mermaid(cfg))
    assert sum(line.startswith("classDef effect ") for line in lines) == 1
    assert [line for line in lines if line.endswith(" effect")] == [
        "class deploying_green,monitoring effect"
    ]
    dot_lines = body(to_dot(cfg))
    marked = [line.split(" ")[0] for line in dot_lines if "penwidth" in line]
    assert marked == ['"deploying_green"', '"monitoring"']
    assert not any("effect" in line for line in body(to_mermaid(blue_green())))


# -- DOT -----------------------------------------------------------------------


def test_dot_blue_green_structure() -> None:
    text = to_dot(blue_green())
    lines = body(text)
    assert lines[0] == 'digraph "blue-green" {'
    assert lines[1] == "rankdir=LR;"
    assert lines[-1] == "}"
    assert '"__start__" [shape=point];' in lines
    assert [line for line in lines if "->" in line] == EXPECTED_DOT_EDGES
    node_lines = [line for line in lines if line.startswith('"') and "->" not in line]
    assert [line.split('"')[1] for line in node_lines] == ["__start__", *STATES]
    assert [line for line in lines if "doublecircle" in line] == [
        '"completed" [shape=doublecircle];',
        '"rolling_back" [shape=doublecircle];',
    ]
    assert "fillcolor" not in text
    check_with_graphviz(text, expected_nodes=len(STATES))


def test_dot_highlights_only_the_current_state() -> None:
    lines = body(to_dot(blue_green(), current_state="testing_green"))
    filled = [line for line in lines if "fillcolor" in line]
    assert len(filled) == 1
    assert filled[0].startswith('"testing_green" [style="rounded,filled", fillcolor=')
    done = body(to_dot(blue_green(), current_state="completed"))
    assert [line for line in done if "fillcolor" in line] == [
        '"completed" [shape=doublecircle, style="rounded,filled", fillcolor="#ffd966"];'
    ]


def test_dot_start_node_never_collides_with_a_state() -> None:
    cfg = blue_green(states=[*STATES, "__start__"], final_states=["completed"])
    text = to_dot(cfg)
    lines = body(text)
    assert '"___start___" [shape=point];' in lines
    assert '"___start___" -> "idle";' in lines
    assert '"__start__";' in lines
    check_with_graphviz(text, expected_nodes=len(STATES) + 1)


# -- machines, odd names, errors, determinism ------------------------------------


def test_a_machine_highlights_its_own_state() -> None:
    machine = FakeMachine(as_dataclass(blue_green()), "switching_traffic")
    mermaid = body(to_mermaid(machine))
    assert [line for line in mermaid if line.endswith(" current")] == [
        "class switching_traffic current"
    ]
    dot = [line for line in body(to_dot(machine)) if "fillcolor" in line]
    assert len(dot) == 1 and dot[0].startswith('"switching_traffic" ')
    # an explicit current_state wins and the machine is not asked
    calls = machine.calls
    explicit = body(to_mermaid(machine, current_state="idle"))
    assert [line for line in explicit if line.endswith(" current")] == ["class idle current"]
    assert machine.calls == calls


def test_a_machine_with_an_async_get_state_needs_an_explicit_state() -> None:
    class AsyncMachine:
        config = as_dataclass(blue_green())

        async def get_state(self) -> SimpleNamespace:
            return SimpleNamespace(name="idle")

    with pytest.raises(TypeError, match="current_state"):
        to_mermaid(AsyncMachine())
    assert "class idle current" in to_mermaid(AsyncMachine(), current_state="idle")


ODD = ["needs review", "canary-10%", "v1.2", "café", 'say "hi"', "back\\slash", "two\nlines"]
ODD_PLUS_KEYWORDS = [*ODD, "end", "class", "[*]", "direction LR", "s7"]


EVENT = "NEXT; go:now #1"


def odd_config() -> dict[str, Any]:
    states = ["idle", *ODD_PLUS_KEYWORDS]
    chain = [{"from": a, "to": b, "event": EVENT} for a, b in itertools.pairwise(states)]
    return {
        "id": 'odd "id"',
        "initial_state": "idle",
        "states": states,
        "events": [EVENT],
        "transitions": chain,
    }


def test_mermaid_aliases_names_that_are_not_identifiers() -> None:
    text = to_mermaid(odd_config(), current_state="café")
    lines = body(text)
    assert 'state "needs review" as s1' in lines
    assert 'state "canary-10#37;" as s2' in lines
    assert 'state "say #34;hi#34;" as s5' in lines
    assert 'state "two<br>lines" as s7_' in lines  # "s7" is a real state's name
    assert 'state "end" as s8' in lines
    assert 'state "class" as s9' in lines
    assert 'state "#91;*#93;" as s10' in lines
    assert 'state "directio#110; LR" as s11' in lines
    assert "class s4 current" in lines
    assert "idle --> s1: NEXT#59; go#58;now #35;1" in lines
    parsed = parse_mermaid(text)
    assert sorted(parsed["names"].values()) == sorted(odd_config()["states"])
    names = parsed["names"]
    assert {names[a] for a, _, _ in parsed["edges"]} == set(odd_config()["states"][:-1])
    assert {label for _, _, label in parsed["edges"]} == {"NEXT; go:now #1"}


def test_dot_escapes_quotes_backslashes_and_newlines() -> None:
    text = to_dot(odd_config())
    lines = body(text)
    assert lines[0] == 'digraph "odd \\"id\\"" {'
    for line in ('"say \\"hi\\"";', '"back\\\\slash";', '"two\\nlines";', '"café";'):
        assert line in lines
    assert '"back\\\\slash" -> "two\\nlines" [label="NEXT; go:now #1"];' in lines
    assert all(line.startswith("  ") for line in text.splitlines()[1:-1])  # no raw newline
    check_with_graphviz(text, expected_nodes=len(odd_config()["states"]))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (42, "must be a StateMachineConfig or a mapping"),
        ({"id": "x", "states": ["a"]}, "missing required field"),
        (blue_green(initial_state="nowhere"), "initial_state"),
        (
            blue_green(transitions=[{"from": "idle", "to": "ghost", "event": "START"}]),
            "'to' names unknown state 'ghost'",
        ),
        (blue_green(transitions=[{"from": "idle", "event": "START"}]), "missing 'to'"),
        (blue_green(states=["idle", "idle"]), "duplicate state"),
    ],
)
def test_invalid_config_raises_invalid_config(raw: Any, needle: str) -> None:
    for export in (to_mermaid, to_dot):
        with pytest.raises(StateMachineError) as info:
            export(raw)
        assert info.value.code == "INVALID_CONFIG"
        assert any(needle in p for p in info.value.problems), info.value.problems


def test_unknown_current_state_is_refused() -> None:
    with pytest.raises(StateMachineError, match="ghost"):
        to_mermaid(blue_green(), current_state="ghost")
    with pytest.raises(StateMachineError, match="ghost"):
        to_dot(FakeMachine(as_dataclass(blue_green()), "ghost"))


def test_output_is_deterministic_and_independent_of_the_config_form() -> None:
    raw = blue_green()
    dataclass_cfg = StateMachineConfig(
        id="blue-green",
        initial_state="idle",
        states=STATES,
        events=EVENTS,
        transitions=[
            Transition(from_=t["from"], to=t["to"], event=t["event"]) for t in raw["transitions"]
        ],
    )
    for export in (to_mermaid, to_dot):
        first = export(blue_green(), current_state="monitoring")
        assert export(blue_green(), current_state="monitoring") == first
        assert export(dataclass_cfg, current_state="monitoring") == first
        assert export(as_dataclass(raw), current_state="monitoring") == first


# -- property: random small valid configs ------------------------------------------

AWKWARD = st.one_of(
    st.text(alphabet='aZ09_ -."\\\n:;#%<>&`{}[]|*éß中🙂', min_size=1, max_size=8),
    st.sampled_from(["end", "state", "class", "note", "default", "direction", "[*]", "s0", "s1"]),
    st.sampled_from(["start1", "root_start", "href", "direction TB", "__start__", "a [[fork]]"]),
)


@st.composite
def configs(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    states = draw(st.lists(AWKWARD, min_size=1, max_size=6, unique=True))
    events = draw(st.lists(AWKWARD, min_size=1, max_size=3, unique=True))
    transitions = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "from": st.lists(st.sampled_from(states), min_size=1, max_size=3),
                    "to": st.sampled_from(states),
                    "event": st.sampled_from(events),
                }
            ),
            max_size=6,
        )
    )
    cfg = {
        "id": draw(AWKWARD),
        "initial_state": draw(st.sampled_from(states)),
        "states": states,
        "events": events,
        "transitions": transitions,
    }
    return cfg, draw(st.none() | st.sampled_from(states))


@settings(max_examples=150, deadline=None)
@given(configs())
def test_random_configs_export_every_state(case: tuple[dict[str, Any], str | None]) -> None:
    cfg, current = case
    mermaid = to_mermaid(cfg, current_state=current)
    parsed = parse_mermaid(mermaid)
    assert sorted(parsed["names"].values()) == sorted(cfg["states"])
    expected_edges = {(s, t["to"], t["event"]) for t in cfg["transitions"] for s in t["from"]}
    names = parsed["names"]
    assert {(names[a], names[b], label) for a, b, label in parsed["edges"]} == expected_edges
    current_lines = [line for line in mermaid.splitlines() if line.endswith(" current")]
    assert len(current_lines) == (current is not None)

    dot = to_dot(cfg, current_state=current)
    for state in cfg["states"]:
        assert f"\n  {dot_quote(state)}" in dot
    assert dot.count("fillcolor") == (current is not None)
    assert to_dot(cfg, current_state=current) == dot
