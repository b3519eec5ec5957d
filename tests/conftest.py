"""For the whole suite: say at the very end why PostgreSQL tests were skipped, and how
to run them (CI sets ``DEPLOYSM_TEST_PG``, so there they run; without a server they
fail rather than skip)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from deploysm import StateMachineConfig, Transition
from deploysm.testing import VirtualClock

PG_ENV = "DEPLOYSM_TEST_PG"
PING_PONG_START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def ping_pong() -> Callable[..., StateMachineConfig[Any, Any, Any]]:
    """``ping_pong(history_limit=..., store=...)``: the workflow that wrote
    ``fixtures/snapshot_v1_long_history.json`` (``HIT`` flips ping and pong), on a
    ``VirtualClock`` starting at ``PING_PONG_START``."""

    def make(**extra: Any) -> StateMachineConfig[Any, Any, Any]:
        return StateMachineConfig(
            id="ping-pong",
            initial_state="ping",
            states=["ping", "pong", "done"],
            events=["HIT", "STOP"],
            transitions=[
                Transition("ping", "pong", "HIT"),
                Transition("pong", "ping", "HIT"),
                Transition(["ping", "pong"], "done", "STOP"),
            ],
            clock=VirtualClock(PING_PONG_START),
            random=random.Random(1),
            **extra,
        )

    return make


def pytest_unconfigure(config: pytest.Config) -> None:
    # after pytest's own summary and its "N passed" line, so it is the last thing shown
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [r for r in reporter.stats.get("skipped", []) if PG_ENV in str(r.longrepr)]
    if skipped:
        reporter.write_line(
            f"{len(skipped)} PostgreSQL test(s) skipped: {PG_ENV} is not set. Run them with "
            f"{PG_ENV}=postgresql://user@host:port/db make test (a server you can create "
            "schemas in; CI sets it)",
            yellow=True,
            bold=True,
        )
