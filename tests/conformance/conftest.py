"""The conformance tier's shared state: the llama-server pool, and the table it prints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.peers.llama_server import SERVER_BIN, LlamaServerPool


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

# Templates the transformers engine cannot render for some requests nex sends, whatever the
# adaptation (measured by this tier and the property): their rows are xfails with the engine's
# message. One that starts passing fails its test: drop it from here then.
INCOMPATIBLE = {
    "llama-cpp-deepseek-r1": "llama.cpp's own template: tojson of a generator",
    "Kimi-K2-Instruct": "list.append in the immutable sandbox",
    "Kimi-K2-Thinking": "list.append in the immutable sandbox",
}


def row(template: str, engine: str) -> Row:
    """The table row of (template, engine), made on first use."""
    return ROWS.setdefault((template, engine), Row(template, engine))


@pytest.fixture(scope="session")
def llama_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServerPool]:
    """One real llama-server at a time, for the template the running test asks for."""
    if not SERVER_BIN.exists():
        pytest.fail(f"no llama-server at {SERVER_BIN}: run make peers")
    pool = LlamaServerPool(tmp_path_factory.mktemp("llama-server"))
    yield pool
    pool.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("chat template conformance")
    width = max(len(r.template) for r in ROWS.values())
    write(f"{'template':<{width}}  {'engine':<12}  {'outcome':<12}  first refusal")
    counts: dict[str, int] = {}
    for r in sorted(ROWS.values(), key=lambda r: (r.template.lower(), r.engine)):
        outcome = r.outcome + (f" ({', '.join(r.learned)})" if r.learned else "")
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
        refusal = r.first_refusal.replace("\n", " ")[:110]
        write(f"{r.template:<{width}}  {r.engine:<12}  {outcome:<12}  {refusal}")
        for later in r.refusals[1:]:
            write(f"{'':<{width}}  {'':<12}  {'':<12}  then: {later.replace(chr(10), ' ')[:110]}")
    write(" · ".join(f"{n} {k}" for k, n in sorted(counts.items())))
