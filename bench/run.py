"""Run the sections, print the table, write `bench/results/latest.json`.

    python -m bench            the full run (a few minutes)
    python -m bench --quick    fewer repetitions, turns and sessions (under a minute; CI)
    python -m bench --only startup,streaming

Every figure is a ratio against a floor measured in the same run on the same stub: absolute
times drift on shared machines, ratios much less. Exit status: 0 when the run completed (a
missed target is reported, not an error: CI keeps the suite from rotting, it does not gate on
timings), 1 when a section failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fleet, prefill, sandbox, startup, turns
from bench.harness import ROOT, Figure, compile_bytecode, scratch_dir
from bench.settings import FULL, QUICK, Context

RESULTS = ROOT / "bench" / "results"

Section = Callable[[Context], list[Figure]]
SECTIONS: dict[str, Section] = {
    "startup": startup.startup,
    "per-turn": turns.per_turn,
    "streaming": turns.streaming,
    "long": turns.long_sessions,
    "concurrency": fleet.concurrency,
    "memory": startup.memory,  # after startup: it reports the idle REPL measured there
    "sandbox": sandbox.sandbox_cost,
    "prefill": prefill.prefill,
}


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if unit in ("MB", "req/s", "tok/s") or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def _ratio(f: Figure) -> str:
    if f.target and "+" in f.target and f.baseline_value is not None:
        return f"+{f.value - f.baseline_value:,.0f} {f.unit}"
    return "" if f.ratio is None else f"{f.ratio:.2f}×"


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table (it reads in a terminal and pastes into the README)."""
    header = ["section", "measurement", "nex", "baseline", "ratio", "target", ""]
    rows = [header, ["---"] * len(header)]
    for f in figures:
        base = f"{f.baseline} {_fmt(f.baseline_value, f.unit)}" if f.baseline else ""
        name = f"{f.name} ({f.note})" if f.note else f.name
        rows.append(
            [
                f.section,
                name,
                _fmt(f.value, f.unit),
                base,
                _ratio(f),
                f.target or "",
                f.status or "",
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "litellm": version("litellm"),
        "openai": version("openai"),
        "httpx": version("httpx"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute (CI)")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    names = list(SECTIONS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    settings = QUICK if args.quick else FULL
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    compile_bytecode()
    with scratch_dir() as scratch:
        ctx = Context(settings, scratch)
        try:
            for name in names:
                print(f"bench: {name} …", file=sys.stderr, flush=True)
                start = time.perf_counter()
                try:
                    figures += SECTIONS[name](ctx)
                except Exception as e:
                    errors[name] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                durations[name] = round(time.perf_counter() - start, 1)
        finally:
            ctx.close()

    total = time.perf_counter() - began
    info = machine()
    load_after = os.getloadavg()[0]
    print(table(figures))
    print(
        f"\n{info['cpus']} CPUs, Python {info['python']}, litellm {info['litellm']}, "
        f"openai {info['openai']}; load average {load_before:.1f} at the start, "
        f"{load_after:.1f} at the end"
    )
    misses = [f for f in figures if f.status == "MISS"]
    passes = [f for f in figures if f.status == "PASS"]
    print(
        f"{len(passes)} PASS, {len(misses)} MISS, {len(errors)} failed section(s), "
        f"{total:.0f} s ({'quick' if args.quick else 'full'} run)"
    )
    for name, error in errors.items():
        print(f"bench: {name} failed: {error}", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds": round(total, 1),
        "section_seconds": durations,
        "machine": {**info, "load_before": load_before, "load_after": load_after},
        # A child's peak RSS as reported includes its parent's at spawn: this bounds the error.
        "bench_process_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "figures": [f.as_dict() for f in figures],
        "errors": errors,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if errors else 0
