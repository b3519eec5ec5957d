"""The layout's rules (.importlinter): a layer imports only the layers below it
(cli > runtime > engine > stores > durable > core) and no modules import each other in
a cycle. ``make lint`` runs the same check; these tests also show it catches a break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import deploysm

ROOT = Path(__file__).resolve().parents[2]
PKG = Path(deploysm.__file__).parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts, on the package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(PKG, src / "deploysm", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def plant(src: Path, module: str, line: str) -> None:
    path = src / "deploysm" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_layers_are_packages() -> None:
    for layer in ("core", "durable", "engine", "stores", "runtime", "cli"):
        assert (PKG / layer / "__init__.py").is_file(), layer
    # beside the layers only the package's front door and the public testing helpers
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "testing.py"]


def test_the_contracts_hold(tmp_path: Path) -> None:
    done = lint(copy_of_the_package(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    src = copy_of_the_package(tmp_path)
    plant(src, "core/_retry.py", "from ..engine import _mutex  # noqa")
    done = lint(src)
    assert done.returncode == 1
    assert "deploysm.core is not allowed to import deploysm.engine" in done.stdout


def test_a_cycle_inside_a_layer_breaks_the_acyclic_contract(tmp_path: Path) -> None:
    src = copy_of_the_package(tmp_path)
    # _step imports _head; a type-only import back is a cycle too
    plant(src, "core/_head.py", "import typing\nif typing.TYPE_CHECKING:\n    from . import _step")
    done = lint(src)
    assert done.returncode == 1
    assert "No cycles are allowed in deploysm.core" in done.stdout
