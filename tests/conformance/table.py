"""The conformance tier's table: one row per (template, engine), printed at the end of the run.

Rows are filled in whichever process runs the tier. Under pytest-xdist (`make test` runs two
workers) that is a worker, so a worker hands its rows to the controller through xdist's
``workeroutput`` and the controller prints them (the hooks are in tests/conftest.py: a
subfolder's conftest is never loaded by the controller).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pytest


@dataclass
class Row:
    """One template on one engine: how its sessions went."""

    template: str
    engine: str
    outcome: str = "pass"  # pass · adapted · fail · incompatible · unrenderable
    learned: list[str] = field(default_factory=list)
    first_refusal: str = ""
    refusals: list[str] = field(default_factory=list)  # every distinct one, in order


ROWS: dict[tuple[str, str], Row] = {}
OUTPUT_KEY = "conformance_rows"


def row(template: str, engine: str) -> Row:
    """The table row of (template, engine), made on first use."""
    return ROWS.setdefault((template, engine), Row(template, engine))


def export(config: pytest.Config) -> None:
    """On an xdist worker: hand the rows to the controller."""
    output = getattr(config, "workeroutput", None)
    if output is not None and ROWS:
        output[OUTPUT_KEY] = [asdict(r) for r in ROWS.values()]


def receive(workeroutput: dict[str, Any]) -> None:
    """On the controller: take a worker's rows."""
    for fields in workeroutput.get(OUTPUT_KEY, []):
        r = Row(**fields)
        ROWS[(r.template, r.engine)] = r


def headline(refusal: str) -> str:
    """What a refusal says, without the engine's wrapping: llama.cpp puts the template's own
    words after "Jinja Exception:" at the end of a long trace."""
    words = refusal.rsplit("Exception:", 1)[-1] if "Jinja Exception:" in refusal else refusal
    return " ".join(words.split())[:110]


def report(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the table, if this process has rows."""
    if not ROWS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("chat template conformance")
    width = max(len(r.template) for r in ROWS.values())
    write(f"{'template':<{width}}  {'engine':<12}  {'outcome':<12}  first refusal")
    counts: dict[str, int] = {}
    for r in sorted(ROWS.values(), key=lambda r: (r.template.lower(), r.engine)):
        outcome = r.outcome + (f" ({', '.join(r.learned)})" if r.learned else "")
        counts[f"{r.engine} {r.outcome}"] = counts.get(f"{r.engine} {r.outcome}", 0) + 1
        refusal = headline(r.first_refusal)
        write(f"{r.template:<{width}}  {r.engine:<12}  {outcome:<12}  {refusal}")
        for later in r.refusals[1:]:
            write(f"{'':<{width}}  {'':<12}  {'':<12}  then: {headline(later)}")
    write(" · ".join(f"{n} {k}" for k, n in sorted(counts.items())))
