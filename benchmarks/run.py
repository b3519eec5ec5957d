"""Run every benchmark of ``make bench``, print the targets, rewrite the docs.

Each benchmark runs in a process of its own (``python benchmarks/<file> --json``), so
its memory figures start clean and a crash or a failed work check stops only that
benchmark; its progress shows on stderr as it goes. When every benchmark ran (or was
skipped, e.g. PostgreSQL without a URL), ``docs/performance.md`` and the README's
performance table are rewritten from this run's results. A failed benchmark makes the
run exit non-zero and writes nothing.

    python benchmarks/run.py [--quick] [--pg URL] [--only B1,B2s] [--no-write]
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import report
from harness import Result, render

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = {
    "B1": "b1_inmemory.py",
    "B1m": "b1m_memory.py",
    "B2s": "b2s_sqlite.py",
    "B2p": "b2p_postgres.py",
    "B3": "b3_concurrency.py",
    "B4": "b4_recovery.py",
    "B5": "b5_latency.py",
    "B6": "b6_long_lived.py",
}
TIMEOUT_S = 3600


def run_one(bench: str, args: argparse.Namespace) -> Result | None:
    """The benchmark's result, or ``None`` if it failed (its stderr says why)."""
    cmd = [sys.executable, str(HERE / BENCHMARKS[bench]), "--json"]
    if args.quick:
        cmd.append("--quick")
    if args.pg:
        cmd += ["--pg", args.pg]
    print(f"== {bench}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"== {bench}: timed out after {TIMEOUT_S} s", file=sys.stderr)
        return None
    took = time.monotonic() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        print(f"== {bench}: FAILED (exit {proc.returncode}) after {took:.0f} s", file=sys.stderr)
        return None
    result = Result.from_json(lines[-1])
    print(f"== {bench}: done in {took:.0f} s", file=sys.stderr, flush=True)
    return result


def docstring(bench: str) -> str:
    tree = ast.parse((HERE / BENCHMARKS[bench]).read_text(encoding="utf-8"))
    return ast.get_docstring(tree) or ""


def machine_line() -> str:
    cpus = os.cpu_count()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when}, {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"


def write_docs(results: list[Result]) -> None:
    doc = ROOT / "docs" / "performance.md"
    analysis_file = HERE / "analysis.md"
    analysis = report.analysis_sections(analysis_file.read_text(encoding="utf-8"))
    methods = {r.id: report.method_of(docstring(r.id)) for r in results}
    doc.write_text(
        report.performance_md(results, methods, analysis, machine_line()), encoding="utf-8"
    )
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(
        report.replace_readme_section(text, report.readme_table(results)), encoding="utf-8"
    )
    print(f"wrote {doc.relative_to(ROOT)} and the README's performance table", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes; implies --no-write")
    p.add_argument("--pg", default=os.environ.get("DEPLOYSM_TEST_PG"), help="PostgreSQL URL")
    p.add_argument("--only", default="", help="comma-separated ids, e.g. B1,B2s")
    p.add_argument("--no-write", action="store_true", help="do not rewrite the docs")
    args = p.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    results: list[Result] = []
    failed: list[str] = []
    for bench in chosen:
        result = run_one(bench, args)
        if result is None:
            failed.append(bench)
        else:
            results.append(result)
            print(render(result), flush=True)
    print("\nTargets:")
    print("\n".join(report.targets_table(results)))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}; nothing written", file=sys.stderr)
        return 1
    if args.quick or args.no_write or args.only:
        print("(docs not rewritten: quick, --only or --no-write run)", file=sys.stderr)
        return 0
    write_docs(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
