"""Keys on the command line: ``DEPLOYSM_KEYS`` encrypts what every verb writes, and a
verb run without keys on an encrypted store refuses to write in clear."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploysm.stores import EncryptedCodec, SQLiteStore

pytest.importorskip("cryptography")

ROOT = Path(__file__).resolve().parents[2]
KEY = EncryptedCodec.generate_key()
KEYS = f"k2:{EncryptedCodec.key_to_text(KEY)},k1:{EncryptedCodec.key_to_text(os.urandom(32))}"
CODEC = EncryptedCodec.from_string(KEYS)
CTX_SECRET = "who-Hy6Tg29bNm3K"
PAYLOAD_SECRET = "pay-Lo8Ik37uJn2W"
APP = "tests.acceptance.runtime_app:WORKFLOWS"


def _env(db: str, keys: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYSM_KEYS"}
    env.update(DEPLOYSM_DB=db, PYTHONPATH=str(ROOT))
    if keys is not None:
        env["DEPLOYSM_KEYS"] = keys
    return env


def cli(*args: str, db: str, keys: str | None = KEYS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploysm", *args],
        capture_output=True,
        text=True,
        env=_env(db, keys),
        cwd=ROOT,
        timeout=60,
    )


def _raw(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


async def _read(path: Path, machine_id: str) -> tuple[Any, Any]:
    async with SQLiteStore(path, codec=CODEC) as store:
        return await store.load(machine_id), await store.next_event(machine_id)


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_every_verb_writes_encrypted_with_deploysm_keys(tmp_path: Path) -> None:
    path = tmp_path / "enc.db"
    db = f"sqlite:///{path}"
    assert cli("migrate", db=db).returncode == 0
    started = cli("start", "pipeline", "m1", "--context", f'{{"who": "{CTX_SECRET}"}}', db=db)
    assert started.returncode == 0, started.stderr
    payload = f'{{"p": "{PAYLOAD_SECRET}"}}'
    for n in (1, 2):
        sent = cli("send", "m1", "NEXT", "--event-id", f"e{n}", "--payload", payload, db=db)
        assert sent.returncode == 0, sent.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "deploysm", "worker", "--app", APP, "--poll-ms", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(db, KEYS),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap, _ = asyncio.run(_read(path, "m1"))
            if snap is not None and snap.status == "completed":
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert snap is not None and snap.context["who"] == CTX_SECRET
    raw = _raw(path)
    assert CTX_SECRET.encode() not in raw and PAYLOAD_SECRET.encode() not in raw
    shown = cli("show", "m1", "--json", db=db)
    assert shown.returncode == 0 and CTX_SECRET in shown.stdout
    history = cli("history", "m1", "--json", db=db)
    assert history.returncode == 0 and '"kind": "committed"' in history.stdout
    for verb in ("show", "history"):
        _one_line_error(cli(verb, "m1", db=db, keys=None), 1, "DEPLOYSM_KEYS")


def test_no_verb_writes_in_clear_into_an_encrypted_store(tmp_path: Path) -> None:
    path = tmp_path / "enc.db"
    db = f"sqlite:///{path}"
    assert cli("migrate", db=db).returncode == 0
    assert cli("start", "pipeline", "m1", "--context", "{}", db=db).returncode == 0
    before = _raw(path)
    refused = [
        ("start", "pipeline", "m2", "--context", '{"who": "clear"}'),
        ("send", "m1", "NEXT", "--payload", '{"p": "clear"}'),
        ("worker", "--app", APP, "--poll-ms", "50"),
    ]
    for args in refused:
        _one_line_error(cli(*args, db=db, keys=None), 1, "KEYS_REQUIRED")
    assert b"clear" not in _raw(path)
    snap, event = asyncio.run(_read(path, "m1"))
    assert snap is None and event is None  # not run, no event: nothing was written
    ls = cli("ls", "--json", db=db, keys=None)  # reading what is not encrypted needs no keys
    assert ls.returncode == 0 and '"m1"' in ls.stdout and '"m2"' not in ls.stdout
    assert len(before) > 0


@pytest.mark.parametrize(
    "keys",
    ["k1", "k1:not-base64!", "k1:" + EncryptedCodec.key_to_text(b"short"), f"{KEYS},{KEYS}"],
)
def test_a_bad_keyring_is_a_usage_error_that_does_not_echo_it(tmp_path: Path, keys: str) -> None:
    done = cli("start", "pipeline", "m1", db=f"sqlite:///{tmp_path}/k.db", keys=keys)
    _one_line_error(done, 2, "DEPLOYSM_KEYS")
    assert EncryptedCodec.key_to_text(KEY).rstrip("=") not in done.stderr
    assert not (tmp_path / "k.db").exists()


@pytest.mark.parametrize("verb", ["worker", "start", "send", "cancel", "show", "prune"])
def test_help_says_where_the_keys_come_from(verb: str) -> None:
    done = cli(verb, "--help", db="unused.db")
    assert done.returncode == 0 and "DEPLOYSM_KEYS" in done.stdout
