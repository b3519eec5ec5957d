"""The ``deploysm`` command line, run as a real subprocess (``python -m deploysm``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BLUE_GREEN = "deploysm.examples.blue_green:blue_green_config"
FAST = "300"  # ~320 simulated seconds in ~1 s


def deploysm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def positions(text: str, needles: list[str]) -> list[int]:
    found = [text.find(n) for n in needles]
    assert -1 not in found, [n for n, i in zip(needles, found, strict=True) if i == -1]
    return found


def test_demo_completes_and_prints_progress_and_history(tmp_path: Path) -> None:
    r = deploysm("demo", "--speed", FAST, "--db", str(tmp_path / "demo.db"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    assert "Traceback" not in r.stderr
    states = [
        "idle",
        "preparing_green",
        "deploying_green",
        "testing_green",
        "switching_traffic",
        "monitoring",
        "completed",
    ]
    at = positions(out, [f"state    {s} " for s in states])
    assert at == sorted(at)
    steps = positions(out, [f"Routing {p}% traffic to green" for p in range(10, 101, 10)])
    assert steps == sorted(steps)
    assert "retry    waiting" in out  # the simulated load-balancer glitch is retried
    for i in range(1, 6):
        assert f"health check {i}/5 ok" in out
    history = out[out.index("\nHistory\n") :]
    rows = positions(history, [f"\n  {s} " for s in states])
    assert rows == sorted(rows)
    assert "Traffic switched" in history
    assert "Monitoring complete" in history
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("Summary: completed after ")
    assert "6 transitions, 1 retry" in summary


def test_demo_help_explains_resuming() -> None:
    r = deploysm("demo", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "run it again to resume" in text
    assert "default .deploysm/demo.db" in text
    assert "--fresh" in text
    assert "deploysm history demo-blue-green-1 --db .deploysm/demo.db" in text
    assert "exit status: 0 when the deployment finished: completed, or rolled back" in text
    assert "1 when it did not finish" in text
    assert "130 when interrupted" in text
    assert "seed's" not in text


def test_demo_bad_db_exits_2(tmp_path: Path) -> None:
    r = deploysm("demo", "--db", "mysql://nowhere/db")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "deploysm demo: error: USAGE: cannot open --db mysql://nowhere/db: unknown store URL "
        "scheme 'mysql': use a file path, sqlite:///path, memory:// or postgresql://..."
    )


def test_graph_prints_mermaid() -> None:
    r = deploysm("graph", BLUE_GREEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stateDiagram-v2\n")
    assert "monitoring --> completed: HEALTH_OK" in r.stdout


def test_graph_prints_dot_with_current_state() -> None:
    r = deploysm("graph", BLUE_GREEN, "--format", "dot", "--state", "monitoring")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('digraph "blue-green-deployment" {')
    assert '"monitoring" -> "completed" [label="HEALTH_OK"];' in r.stdout
    assert '"monitoring" [style="rounded,filled"' in r.stdout


@pytest.mark.parametrize(
    "target",
    [
        BLUE_GREEN,
        "deploysm.examples.canary:canary_config",
        "deploysm.examples.simple:simple_config",
    ],
)
def test_validate_good_config_exits_0(target: str) -> None:
    r = deploysm("validate", target)
    assert r.returncode == 0, r.stderr
    assert f"{target}: ok" in r.stdout


def test_validate_invalid_mapping_exits_1(tmp_path: Path) -> None:
    (tmp_path / "wf.py").write_text(
        "CONFIG = {'id': 'x', 'initial_state': 'a', 'states': ['a'], 'events': ['E'],\n"
        "          'transitions': [{'from': 'a', 'to': 'b', 'event': 'E'}]}\n"
    )
    r = deploysm("validate", "wf:CONFIG", cwd=tmp_path)
    assert r.returncode == 1
    assert "error: transitions[0] 'to' names unknown state 'b'" in r.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["validate", "no_colon_here"], "module:attribute"),
        (["validate", "no_such_module_xyz:config"], "not found"),
        (["validate", "deploysm.examples.blue_green:missing"], "has no attribute"),
        (["validate", "deploysm:__version__"], "not a StateMachineConfig"),
        (["graph", "deploysm.examples:missing"], "has no attribute"),
        (["graph", BLUE_GREEN, "--state", "nowhere"], "is not one of"),
    ],
)
def test_bad_target_exits_2_with_one_line(args: list[str], expected: str) -> None:
    r = deploysm(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr


def test_version() -> None:
    r = deploysm("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("deploysm ")
