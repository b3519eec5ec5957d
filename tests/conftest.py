"""For the whole suite: say at the very end why PostgreSQL tests were skipped, and how
to run them (CI sets ``DEPLOYSM_TEST_PG``, so there they run; without a server they
fail rather than skip)."""

from __future__ import annotations

import pytest

PG_ENV = "DEPLOYSM_TEST_PG"


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
