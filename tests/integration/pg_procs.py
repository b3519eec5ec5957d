"""What the PostgreSQL process tests share: the worker module, child processes, queries."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pk = _load("postgres_kind", HERE.parent / "contract" / "postgres_kind.py")
pw = _load("pg_worker", HERE / "pg_worker.py")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    out: Path
    err: Path
    files: list[TextIO] = field(default_factory=list)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


def q(conn: psycopg.Connection[Any], query: str, schema: str, *params: Any) -> list[Any]:
    cur = conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params)  # type: ignore[arg-type]
    return cur.fetchall()
