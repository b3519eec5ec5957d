"""The code the README and docs show runs, and prints what they say it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        for i, m in enumerate(BLOCK.finditer(path.read_text())):
            found.append((path.name, i, m.group(1)))
    return found


BLOCKS = _blocks()


def test_the_readme_shows_code() -> None:
    assert any(name == "README.md" for name, _, _ in BLOCKS)


@pytest.mark.parametrize(("name", "index", "code"), BLOCKS, ids=[f"{n}#{i}" for n, i, _ in BLOCKS])
def test_documented_code_runs(name: str, index: int, code: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{name}#{index}", "exec"), {"__name__": f"doc_{index}"})
    printed = out.getvalue()
    if name == "README.md" and index == 0:
        assert "entered validating" in printed
        assert "['idle', 'validating', 'deploying'] -> completed" in printed
        assert "3 transitions, completed" in printed
    if name == "README.md" and index == 1:
        assert printed.strip() == "completed after 310.0 virtual seconds"
    if name == "README.md" and index == 2:
        assert printed.splitlines() == [
            "live {'version': '1.4.2'}",
            "['intent', 'committed', 'intent', 'committed', 'completed']",
        ]
    if name == "runtime.md":
        assert printed.strip() == ("completed ['idle', 'validating', 'deploying'] completed")
    if name == "README.md" and index == 3:
        assert printed.strip() == (
            "[('release-0', 'live'), ('release-1', 'live'), ('release-2', 'live')]"
        )


@pytest.mark.slow
def test_documented_code_type_checks_strictly(tmp_path: Path) -> None:
    """Every block passes ``mypy --strict``, as a user who copies it runs it: one mypy
    run over all the blocks, each in a module of its own."""
    api = pytest.importorskip("mypy.api")
    files = []
    for name, index, code in BLOCKS:
        path = tmp_path / f"{Path(name).stem.replace('-', '_').lower()}_{index}.py"
        path.write_text(code)
        files.append(str(path))
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".cache"), *files]
    )
    assert status == 0, out + err


def test_docs_do_not_speak_of_the_seed() -> None:
    """A new user does not know what "the seed" was: the docs and the config's help
    name the example or the callables themselves."""
    from deploysm import StateMachineConfig

    for path in DOCS:
        assert "seed's" not in path.read_text(), path.name
    assert "seed's" not in (StateMachineConfig.__doc__ or "")
