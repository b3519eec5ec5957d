"""open_store(): one string names a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploysm import StateMachineError
from deploysm.stores import MemoryStore, SQLiteStore, open_store


def test_paths_and_sqlite_urls_open_sqlite_stores(tmp_path: Path) -> None:
    bare = open_store(tmp_path / "a.db")
    absolute = open_store(f"sqlite:///{tmp_path}/b.db")
    relative = open_store("sqlite:///rel/c.db")
    assert isinstance(bare, SQLiteStore) and bare.path == tmp_path / "a.db"
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "b.db"
    assert isinstance(relative, SQLiteStore) and relative.path == Path("rel/c.db")


def test_memory_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize("url", ["", "  ", "sqlite://", "sqlite:///", "redis://x", "ftp://y"])
def test_bad_urls_are_refused_with_a_code(url: str) -> None:
    with pytest.raises(StateMachineError) as info:
        open_store(url)
    assert info.value.code == "INVALID_STORE_URL"
