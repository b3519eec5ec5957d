"""Encryption at rest: with ``EncryptedCodec`` no user data lands in clear in the store.

Secrets are planted where user data goes (a start context, an event payload, an effect's
failure message that the journal records, an exception's message), a worker runs the
machine, and the raw SQLite file (with its ``-wal``) or a ``pg_dump`` of the schema is
searched for them: no hit. Read back with the keys, every value is there; without them
(or with another key) reading fails with a typed error. A store opened without keys on
a store that holds encrypted rows refuses to write (``KEYS_REQUIRED``), writing nothing.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))

import postgres_kind

import deploysm
from deploysm import ErrorCode, StateMachineError, Worker
from deploysm.stores import EncryptedCodec, SQLiteStore

pytest.importorskip("cryptography")

KEY = EncryptedCodec.generate_key()
CODEC = EncryptedCodec({"k1": KEY}, "k1")
OTHER = EncryptedCodec({"k1": EncryptedCodec.generate_key()}, "k1")

CTX_SECRET = "ctx-Zq7Wx41pLmN0"
PAYLOAD_SECRET = "payload-Rt5Yu82kJhG3"
EFFECT_SECRET = "effect-Bn6Vc93xDsA4"
RAISED_SECRET = "raised-Po1Iu28yTrE5"
LATE_SECRET = "late-Mk4Nj57hBgV6"
CLAIM_SECRET = "claim-Qa2Ws39eDrF7"
SECRETS = (CTX_SECRET, PAYLOAD_SECRET, EFFECT_SECRET, RAISED_SECRET, LATE_SECRET, CLAIM_SECRET)


def _flow() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    def build(ctx: dict[str, Any], state: deploysm.State[str]) -> deploysm.EffectResult:
        if state.attempts == 1:
            return deploysm.EffectResult(False, f"registry said {EFFECT_SECRET}")
        if state.attempts == 2:
            raise RuntimeError(f"connection reset near {RAISED_SECRET}")
        return deploysm.EffectResult(True, "built", {"note": EFFECT_SECRET})

    eff = deploysm.effect().execute(build).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="flow",
        initial_state="a",
        states=["a", "b", "c"],
        events=["GO", "NEXT"],
        transitions=[deploysm.Transition("a", "b", "GO"), deploysm.Transition("b", "c", "NEXT")],
        effects={"b": eff},
        retry_policy=deploysm.RetryPolicy(max_attempts=3, initial_delay_ms=1, jitter_factor=0),
    )


class SQLiteKind:
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "enc.db"

    def make(self, codec: Any = None) -> Any:
        return SQLiteStore(self.path, codec=codec)

    def raw(self) -> bytes:
        return b"".join(
            Path(p).read_bytes() for p in sorted(glob.glob(f"{self.path}*")) if Path(p).is_file()
        )

    async def unmigrate(self) -> None:
        """Back to the schema before the mark (as an older version left it)."""
        with sqlite3.connect(self.path) as raw:
            raw.execute("DROP TABLE deploysm_meta")
            raw.execute("ALTER TABLE machines DROP COLUMN last_error")  # 0004, after it
            raw.execute("DELETE FROM deploysm_schema WHERE version >= 3")
        raw.close()

    async def cleanup(self) -> None:
        return None


def _pg_dump() -> str:
    found = shutil.which("pg_dump") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but pg_dump is not installed")
        pytest.skip("pg_dump is not installed")
    return found


class PostgresKind:
    name = "postgres"

    def __init__(self, tmp_path: Path) -> None:
        self.dsn = postgres_kind.pg_dsn()
        self.schema = postgres_kind.fresh_schema()

    def make(self, codec: Any = None) -> Any:
        from deploysm.stores import PostgresStore

        return PostgresStore(self.dsn, schema=self.schema, codec=codec)

    def raw(self) -> bytes:
        done = subprocess.run(
            [_pg_dump(), "--dbname", self.dsn, "--schema", self.schema, "--data-only"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert b"COPY" in done.stdout  # the dump has the rows
        return done.stdout

    async def unmigrate(self) -> None:
        """Back to the schema before the mark (as an older version left it)."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "SET search_path TO {};"
                    " ALTER TABLE machines DROP COLUMN sealed_context;"
                    " ALTER TABLE machines DROP COLUMN last_error, DROP COLUMN sealed_error;"
                    " ALTER TABLE inbox DROP COLUMN sealed;"
                    " ALTER TABLE journal DROP COLUMN sealed, ALTER COLUMN data SET NOT NULL;"
                    " DROP TABLE deploysm_meta;"
                    " DELETE FROM deploysm_schema WHERE version >= 2"
                ).format(sql.Identifier(self.schema))
            )

    async def cleanup(self) -> None:
        await postgres_kind.drop_schema(self.dsn, self.schema)


@pytest.fixture(params=[SQLiteKind, PostgresKind], ids=["sqlite", "postgres"])
async def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    k = request.param(tmp_path)
    try:
        yield k
    finally:
        await k.cleanup()


async def _plant(store: Any) -> None:
    await store.start("flow", "m1", {"token": CTX_SECRET})
    await store.send("m1", {"type": "GO", "payload": {"pw": PAYLOAD_SECRET}}, event_id="e1")
    await Worker(store, {"flow": _flow}, poll_ms=10).run_until_idle()
    snap = await store.load("m1")
    assert snap is not None and snap.current_state.name == "b", snap
    # An undelivered event and a started machine, read back below.
    await store.send("m1", {"type": "NEXT", "payload": {"pw": LATE_SECRET}}, event_id="e2")
    await store.start("other", "m2", {"token": CLAIM_SECRET})


async def test_no_secret_in_clear_and_all_read_back_with_the_key(kind: Any) -> None:
    store = kind.make(CODEC)
    async with store:
        await _plant(store)
        raw_open = kind.raw()
        journal = await store.journal("m1")
        text = repr([dict(e.data) for e in journal])
        assert EFFECT_SECRET in text and RAISED_SECRET in text
        late = await store.next_event("m1")
        assert late is not None and late.event.payload == {"pw": LATE_SECRET}
        (claim,) = await store.claim("t", limit=5, lease_ms=60_000, workflows=["other"])
        assert claim.context == {"token": CLAIM_SECRET}
    for secret in SECRETS:
        assert secret.encode() not in raw_open, secret
        assert secret.encode() not in kind.raw(), secret


async def test_a_wrong_or_missing_key_is_a_typed_error(kind: Any) -> None:
    async with kind.make(CODEC) as store:
        await _plant(store)
    for codec in (OTHER, None):
        async with kind.make(codec) as store:
            for read in (lambda: store.journal("m1"), lambda: store.next_event("m1")):
                with pytest.raises(StateMachineError) as info:
                    await read()
                assert info.value.code == ErrorCode.INVALID_SNAPSHOT
                assert "m1" in info.value.message
                assert not any(s in info.value.message for s in SECRETS)


async def test_no_plaintext_write_into_an_encrypted_store(kind: Any) -> None:
    async with kind.make(CODEC) as store:
        await _plant(store)
        before = (await store.list(), await store.journal("m1"))
    async with kind.make(None) as plain:
        assert [i.machine_id for i in await plain.list()] == ["m1", "m2"]  # reads still work
        sm = deploysm.create_state_machine(_flow(), {"token": "x"}, machine_id="m3")
        snap = await sm.serialize()
        attempts = [
            lambda: plain.start("flow", "m4", {"token": "plain"}),
            lambda: plain.send("m1", {"type": "NEXT", "payload": {"x": 1}}, event_id="e9"),
            lambda: plain.save(snap, expected_version=None),
        ]
        for attempt in attempts:
            with pytest.raises(StateMachineError) as info:
                await attempt()
            assert info.value.code == ErrorCode.KEYS_REQUIRED
    async with kind.make(CODEC) as store:
        assert (await store.list(), await store.journal("m1")) == before
        late = await store.next_event("m1")
        assert late is not None and late.event_id == "e2"


async def test_rows_written_in_clear_before_stay_readable(kind: Any) -> None:
    """Start contexts, payloads and journals written in clear (by a plain store, or by a
    version that did not encrypt them) are still read by a store with keys."""
    async with kind.make(None) as plain:
        await plain.start("flow", "m1", {"token": "t"})
        await plain.send("m1", {"type": "GO", "payload": {"n": 1}}, event_id="e1")
    async with kind.make(CODEC) as store:
        ev = await store.next_event("m1")
        assert ev is not None and ev.event.payload == {"n": 1}
        (claim,) = await store.claim("t", limit=1, lease_ms=60_000)
        assert claim.context == {"token": "t"}


async def test_a_store_encrypted_before_the_mark_is_marked_by_its_migration(kind: Any) -> None:
    """A store written by a version without the mark (encrypted snapshots; contexts,
    payloads and journals in clear) is marked by the migration, and its rows read."""
    async with kind.make(None) as plain:
        await plain.start("flow", "m1", {"token": "t"})
        await plain.send("m1", {"type": "GO", "payload": {"n": 1}}, event_id="e1")
    async with kind.make(CODEC) as store:
        snap = await deploysm.create_state_machine(_flow(), {"k": 1}, machine_id="m2").serialize()
        await store.save(snap, expected_version=None)
    await kind.unmigrate()
    async with kind.make(None) as plain:
        with pytest.raises(StateMachineError) as info:
            await plain.start("flow", "m3", {})
        assert info.value.code == ErrorCode.KEYS_REQUIRED
    async with kind.make(CODEC) as store:
        loaded = await store.load("m2")
        assert loaded is not None and loaded.context == {"k": 1}
        ev = await store.next_event("m1")
        assert ev is not None and ev.event.payload == {"n": 1}
        (claim,) = await store.claim("t", limit=1, lease_ms=60_000)
        assert (claim.machine_id, claim.context) == ("m1", {"token": "t"})
