"""What ``deploysm worker`` tells its operator on stderr, what it does with a machine it
cannot run, and how it lets go on SIGTERM: a real worker process over a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.runtime_app:WORKFLOWS_WITH_RETRIES"


def _env(db: Path) -> dict[str, str]:
    return {**os.environ, "DEPLOYSM_DB": str(db), "PYTHONPATH": str(ROOT)}


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deploysm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(db), cwd=ROOT, timeout=60)


def rows(db: Path, sql: str, *args: Any) -> list[Any]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def status(db: Path, mid: str) -> str:
    ((s,),) = rows(db, "SELECT status FROM machines WHERE id = ?", mid)
    return str(s)


def kinds(db: Path, mid: str) -> list[str]:
    return [
        k for (k,) in rows(db, "SELECT kind FROM journal WHERE machine_id = ? ORDER BY seq", mid)
    ]


def worker(db: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "deploysm", "worker", "--app", APP, "--poll-ms", "50", *args]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(db), **(env or {})},
        cwd=ROOT,
    )


def wait_for(pred: Callable[[], bool], proc: subprocess.Popen[str], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("timed out")


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM; the worker's stderr."""
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return err


def started(db: Path, workflow: str, mid: str, *events: str, context: str = "{}") -> None:
    assert cli(db, "migrate").returncode == 0
    out = cli(db, "start", workflow, mid, "--context", context)
    assert out.returncode == 0, out.stderr
    for event in events:
        assert cli(db, "send", mid, event).returncode == 0


def test_the_worker_logs_a_line_per_transition_and_its_start_and_stop(tmp_path: Path) -> None:
    db = tmp_path / "logs.db"
    evil = "m\x1b[2J1"  # a machine id that would clear the operator's terminal
    started(db, "pipeline", evil, "NEXT", "NEXT")
    proc = worker(db)
    wait_for(lambda: status(db, evil) == "completed", proc)
    err = stop(proc)

    lines = err.splitlines()
    assert "\x1b" not in err
    assert any("INFO deploysm.worker worker " in line and " started: " in line for line in lines)
    assert any("m\\x1b[2J1: a -> b on NEXT" in line for line in lines), err
    assert any("m\\x1b[2J1: b -> c on NEXT" in line for line in lines), err
    assert any(" stopped after " in line for line in lines), err


def test_json_logs_are_one_object_per_line_and_the_level_filters(tmp_path: Path) -> None:
    db = tmp_path / "json.db"
    started(db, "pipeline", "m1", "NEXT")
    proc = worker(db, "--log-format", "json")
    wait_for(lambda: kinds(db, "m1")[-1:] == ["committed"], proc)
    records = [json.loads(line) for line in stop(proc).splitlines()]

    for r in records:
        assert set(r) >= {"ts", "level", "logger", "message", "machine_id", "fields"}
        assert r["logger"].startswith("deploysm")
    (moved,) = [r for r in records if r["machine_id"] == "m1"]
    assert moved["level"] == "info" and moved["message"] == "a -> b on NEXT"
    assert moved["fields"]["attempts"] == 1

    assert cli(db, "send", "m1", "NEXT").returncode == 0
    quiet = worker(db, "--log-level", "warning")
    wait_for(lambda: status(db, "m1") == "completed", quiet)
    assert stop(quiet) == ""  # nothing went wrong: nothing at warning


def test_a_machine_the_worker_cannot_run_is_parked_and_shown_with_its_error(
    tmp_path: Path,
) -> None:
    db = tmp_path / "park.db"
    started(db, "pipeline", "bad", "NEXT")
    started(db, "pipeline", "good", "NEXT")
    # `start` refuses a context that is not an object; an older release or a hand edit
    # may still have stored one
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE machines SET start_context = '\"not an object\"' WHERE id = 'bad'")
    raw.close()
    proc = worker(db)
    wait_for(lambda: kinds(db, "bad")[-1:] == ["failed"] and status(db, "good") == "active", proc)
    for mid in ("bad", "good"):  # the next run of "bad" must load its stored context
        assert cli(db, "send", mid, "NEXT").returncode == 0
    wait_for(lambda: status(db, "bad") == "needs_attention", proc)
    wait_for(lambda: status(db, "good") == "completed", proc)
    time.sleep(0.5)  # a worker that retried it would have claimed it again by now
    err = stop(proc)

    assert "bad: parked (needs_attention): the worker cannot run it" in err
    assert kinds(db, "bad").count("unrunnable") == 1
    sql = "SELECT lease_owner, lease_expires_at FROM machines WHERE id = 'bad'"
    assert rows(db, sql) == [(None, None)]
    listed = cli(db, "ls", "--status", "needs_attention")
    assert listed.returncode == 0 and "bad" in listed.stdout and "good" not in listed.stdout
    assert "INVALID_SNAPSHOT: " in listed.stdout  # why, in the LAST ERROR column
    shown = cli(db, "show", "bad")
    assert shown.returncode == 0, shown.stderr
    assert "needs_attention (parked: the worker cannot run it)" in shown.stdout
    assert "context must be an object" in shown.stdout
    assert "deploysm unpark bad" in shown.stdout
    assert "parked: the worker cannot run it" in cli(db, "history", "bad").stdout


def test_sigterm_during_a_retry_delay_gives_the_lease_back_at_once(tmp_path: Path) -> None:
    db = tmp_path / "term.db"
    started(db, "flaky", "m1", "GO")
    first = worker(db)
    wait_for(lambda: "retry_scheduled" in kinds(db, "m1"), first)
    stopping = time.monotonic()
    err = stop(first)

    assert time.monotonic() - stopping < 3, err  # not after the 4 s retry delay
    assert "m1: handed back while waiting to retry" in err
    assert "attempt" not in kinds(db, "m1")[kinds(db, "m1").index("retry_scheduled") :]
    sql = "SELECT status, lease_owner, lease_expires_at FROM machines WHERE id = 'm1'"
    assert rows(db, sql) == [("active", None, None)]

    # another worker takes it over at once: no lease of 30 s to wait for
    second = worker(db)
    wait_for(lambda: status(db, "m1") == "completed", second, within=15)
    stop(second)
    assert kinds(db, "m1").count("committed") == 1


def killed_then_taken_over(db: Path, lease_ms: str) -> str:
    """Worker "doomed" is SIGKILLed in the middle of m1's transition; another worker
    then runs m1 to the end. That worker's stderr."""
    started(db, "slow", "m1", "GO")
    slow = {"SLOW_EFFECT_S": "60"}
    doomed = worker(db, "--lease-ms", lease_ms, "--worker-id", "doomed", env=slow)
    wait_for(lambda: "intent" in kinds(db, "m1"), doomed)
    doomed.kill()  # SIGKILL: its lease stays until it expires
    doomed.communicate(timeout=20)

    heir = worker(db, "--lease-ms", lease_ms)
    wait_for(lambda: status(db, "m1") == "completed", heir)
    return stop(heir)


def test_taking_over_the_machine_of_a_killed_worker_is_logged(tmp_path: Path) -> None:
    err = killed_then_taken_over(tmp_path / "kill.db", "1000")
    assert "m1: taken over from worker doomed, whose lease expired" in err, err


def test_a_starting_worker_says_it_waits_for_the_lease_of_a_killed_worker(
    tmp_path: Path,
) -> None:
    lines = killed_then_taken_over(tmp_path / "wait.db", "4000").splitlines()
    waiting = [i for i, line in enumerate(lines) if "m1: waiting " in line]
    assert len(waiting) == 1, lines  # said once, at start, not at every poll
    line = lines[waiting[0]]
    assert " INFO deploysm.worker m1: waiting " in line, line
    assert " s for the lease of worker doomed (a stopped worker's lease expires by itself)" in line
    seconds = int(line.split("m1: waiting ")[1].split(" s ")[0])
    assert 0 <= seconds <= 4, line
    taken = [i for i, line in enumerate(lines) if "m1: taken over from worker doomed" in line]
    assert len(taken) == 1 and taken[0] > waiting[0], lines
