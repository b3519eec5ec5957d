"""``make bench``'s report: results round-trip through JSON and land in the docs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import harness
import report


def result(bench: str = "B1", met: bool = True) -> harness.Result:
    return harness.Result(
        bench,
        f"{bench}: in-memory ring",
        rows=[
            harness.Row("deploysm", 120_000.0, "transitions/s", 5.0, "a | note"),
            harness.Row("transitions AsyncMachine", 24_000.0, "transitions/s", 1.0),
        ],
        targets=[harness.at_least("deploysm / transitions", 5.0 if met else 3.0, 4)],
        setup="200,000 transitions, best of 5",
        versions={"python": "3.11.7", "transitions": "0.9.3"},
    )


def test_result_round_trips_through_json() -> None:
    r = result()
    assert harness.Result.from_json(r.to_json()) == r


def test_targets_say_met_or_missed() -> None:
    assert harness.at_least("x", 4.0, 4).met
    assert not harness.at_least("x", 3.99, 4).met
    assert harness.at_most("y", 2048, 2048).met
    assert not harness.at_most("y", 2049, 2048).met


def test_check_stops_a_benchmark_that_did_not_do_its_work() -> None:
    with pytest.raises(SystemExit, match="work check failed: 3 of 4"):
        harness.check(False, "3 of 4")


def test_performance_page_has_targets_versions_method_rows_and_analysis() -> None:
    skipped = harness.Result("B2p", "B2p: on PostgreSQL", skipped="no PostgreSQL URL")
    page = report.performance_md(
        [result("B1", met=False), skipped],
        {"B1": "**Workload.** A ring.", "B2p": "**Workload.** The same, on PostgreSQL."},
        report.analysis_sections("# x\n\n## B1\n\nThe GC.\n\n## B2p\n\nRound trips.\n"),
        "2026-11-28, x86_64, 2 CPUs",
    )
    assert "| B1 | deploysm / transitions | 3.00 | >= 4 | **missed** |" in page
    assert "| transitions | 0.9.3 |" in page
    assert "**Workload.** A ring." in page
    assert "| deploysm | 120,000 transitions/s | 5.00x | a / note |" in page
    assert "### What limits it\n\nThe GC." in page
    assert "Skipped in this run: no PostgreSQL URL." in page
    assert "Round trips." in page


def test_readme_section_is_replaced_between_its_markers_only() -> None:
    readme = f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nrest\n"
    table = report.readme_table([result()])
    once = report.replace_readme_section(readme, table)
    assert once.startswith("intro\n") and once.endswith(f"{report.README_END}\nrest\n")
    assert "old" not in once and "| B1 | deploysm / transitions (>= 4) | 5.00 | met |" in once
    assert report.replace_readme_section(once, table) == once
    with pytest.raises(ValueError, match="bench:begin"):
        report.replace_readme_section("no markers", table)


def test_the_readme_has_the_bench_markers() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    report.replace_readme_section(text, "table")
