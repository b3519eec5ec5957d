"""Turning the results of one ``make bench`` run into ``docs/performance.md`` and the
README's performance table."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from harness import Result, fmt

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"

INTRO = """\
# Performance

Every figure on this page was measured by one `make bench` run, on one machine, with
the peers measured in the same run beside deploysm. Shared machines are noisy, so the
ratios are what carries over from one machine to another, not the absolute figures.
Each benchmark checks that every system really did the work it is credited with
(effect calls, rows written, machines finished) before it reports a figure.

This page is written by `benchmarks/run.py`; the text under each "What limits it"
comes from `benchmarks/analysis.md`. To measure again:

    make bench                          # everything; PostgreSQL when DEPLOYSM_TEST_PG is set
    .venv/bin/python benchmarks/run.py --pg postgresql://... --only B1,B2p
    .venv/bin/python benchmarks/run.py --quick      # a smoke run; writes nothing
"""


def method_of(doc: str) -> str:
    """A benchmark module's docstring without its title line."""
    lines = doc.strip().splitlines()
    return "\n".join(lines[1:]).strip()


def analysis_sections(text: str) -> dict[str, str]:
    """``## B1`` ... sections of ``analysis.md``, by benchmark id."""
    out: dict[str, str] = {}
    for block in re.split(r"(?m)^## ", text)[1:]:
        head, _, body = block.partition("\n")
        out[head.split()[0]] = body.strip()
    return out


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def rows_table(result: Result) -> list[str]:
    lines = ["| system | figure | ratio | note |", "| --- | ---: | ---: | --- |"]
    for r in result.rows:
        note = r.note.replace("|", "/")
        lines.append(f"| {r.system} | {fmt(r.value, r.unit)} | {_ratio(r.ratio)} | {note} |")
    return lines


def targets_table(results: Sequence[Result]) -> list[str]:
    lines = ["| id | target | measured | goal | |", "| --- | --- | ---: | --- | --- |"]
    for res in results:
        for t in res.targets:
            mark = "met" if t.met else "**missed**"
            lines.append(f"| {res.id} | {t.text} | {t.value:,.2f} | {t.goal} | {mark} |")
    return lines


def versions_table(results: Sequence[Result]) -> list[str]:
    merged: dict[str, str] = {}
    for res in results:
        merged.update(res.versions)
    lines = ["| component | version |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(merged.items())]
    return lines


def performance_md(
    results: Sequence[Result],
    methods: Mapping[str, str],
    analysis: Mapping[str, str],
    machine: str,
) -> str:
    out = [INTRO, f"**This run:** {machine}.", "", "## Targets", ""]
    out += targets_table(results)
    out += ["", "## Versions", ""]
    out += versions_table(results)
    for res in results:
        out += ["", f"## {res.title}", ""]
        if res.skipped:
            out += [f"Skipped in this run: {res.skipped}.", ""]
        method = methods.get(res.id, "")
        if method:
            out += [method, ""]
        if not res.skipped:
            if res.setup:
                out += [f"**Result** ({res.setup}):", ""]
            out += rows_table(res)
            out.append("")
        if res.id in analysis:
            out += ["### What limits it", "", analysis[res.id], ""]
    return "\n".join(out).rstrip() + "\n"


def readme_table(results: Sequence[Result]) -> str:
    lines = ["| benchmark | target | measured | |", "| --- | --- | ---: | --- |"]
    for res in results:
        for t in res.targets:
            mark = "met" if t.met else "missed"
            lines.append(f"| {res.id} | {t.text} ({t.goal}) | {t.value:,.2f} | {mark} |")
    return "\n".join(lines)


def replace_readme_section(readme: str, table: str) -> str:
    """The README with the text between the bench markers replaced by ``table``."""
    start, end = readme.find(README_BEGIN), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} section")
    return readme[: start + len(README_BEGIN)] + "\n" + table + "\n" + readme[end:]
