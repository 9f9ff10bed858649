"""Prefill: how much of each prompt a server with a prompt cache has to process again.

llama.cpp, vLLM and Ollama keep the KV cache of the previous request (its prompt and the answer
they generated) and re-process everything after the first byte that differs; locally that is
the wait a user feels. This section runs a scripted tool session through `nex --autonomous`
against the stub in template mode (the real Qwen3-Coder template, rendered as vLLM renders it)
and models a one-slot server on the rendered prompts, in characters:

- prefilled: for each request, its prompt less the common prefix with what the cache holds after
  the previous request (that prompt plus its answer, rendered by the template);
- ideal: only what is new since the previous request of the conversation: the whole first
  prompt, then the messages after the last assistant message (tool results, a user turn).
  Summary requests add nothing to it: what compaction costs is overhead.

Breaks are requests of the conversation (with tools) that do not extend the previous one's
prompt and answer byte for byte; they may happen only at compaction events.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import NEX, ROOT, Figure, at_most, clean_env, figure
from bench.settings import Context
from nexpy.compaction import SUMMARIZE_HERE
from nexpy.litellm_setup import prepare_environment
from stubs.oai import stub_server
from stubs.template import TemplateRenderer

TEMPLATE = (
    ROOT / ".peers/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/Qwen3-Coder.jinja"
)
WINDOW = 4096  # the small window: compaction every so often
ROOMY = 262_144  # no context pressure at all
# What nex's two kinds of summary request carry in their last user message.
ASKED_HERE = SUMMARIZE_HERE.split(",")[0]
ASKED_ALONE = "The conversation excerpt to summarize"
SUMMARY = (
    "Summary: the task is to read the part files one by one and report anomalies. Parts read so "
    "far held rows of numbers with status ok; no anomaly found yet. Next: read the next part."
)


@dataclass
class Prefill:
    """The prefill figures of one session."""

    requests: int
    prefilled: int  # characters a one-slot prompt cache had to process
    ideal: int  # characters that were new
    breaks: int  # conversation requests that did not extend the previous one
    compactions: int  # compaction events in the journal
    exit_code: int

    @property
    def ratio(self) -> float:
        return self.prefilled / self.ideal if self.ideal else float("nan")


def common_prefix(a: str, b: str) -> int:
    """Length of the common prefix of `a` and `b` (by halving, since they are long)."""
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def measure(
    renderer: TemplateRenderer,
    bodies: list[dict[str, Any]],
    prompts: list[str | None],
    answers: list[dict[str, Any] | None],
) -> tuple[int, int, int]:
    """(prefilled, ideal, breaks) of a recorded session; see the module's docstring."""
    prefilled = ideal = breaks = 0
    cache = ""  # what the one slot holds after the previous request
    conversation = ""  # the same, after the previous request with tools
    for body, prompt, answer in zip(bodies, prompts, answers, strict=True):
        if prompt is None:
            continue
        prefilled += len(prompt) - common_prefix(prompt, cache)
        after = prompt
        if answer is not None:
            after = renderer.render(
                {**body, "messages": [*body["messages"], answer]}, generation=False
            )
        cache = after
        if _summary_request(body):
            continue  # compaction's overhead
        messages = body["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        if last < 0:
            ideal += len(prompt)
        else:
            head = renderer.render({**body, "messages": messages[: last + 1]}, generation=False)
            ideal += len(prompt) - len(head)
        if conversation and not prompt.startswith(conversation):
            breaks += 1
        conversation = after
    return prefilled, ideal, breaks


def _summary_request(body: dict[str, Any]) -> bool:
    users = [m for m in body["messages"] if m.get("role") == "user"]
    text = str(users[-1].get("content")) if users else ""
    return ASKED_HERE in text or ASKED_ALONE in text


def compaction_events(journal: list[dict[str, Any]]) -> int:
    """Compaction events: runs of `compaction` entries with no message between them."""
    events, inside = 0, False
    for entry in journal:
        if entry.get("kind") == "compaction" and entry.get("reason") == "context":
            events += not inside
            inside = True
        elif entry.get("kind") == "message":
            inside = False
    return events


def write_parts(work: Path, rounds: int, chars: int) -> None:
    """One file per round, of varied rows, so each tool result is new text."""
    for k in range(rounds):
        rows = [
            f"part {k:02d} row {i:03d} value={(i * 7919 + k * 31) % 10007} status=ok"
            for i in range(chars // 45)
        ]
        (work / f"part_{k:02d}.txt").write_text("\n".join(rows) + "\n")


def session(
    root: Path, *, window: int, rounds: int = 60, chars: int = 900, timeout: float = 600
) -> Prefill:
    """Run `rounds` read_file rounds through `nex --autonomous` on a `window`-token window."""
    work, home = root / "work", root / "home"
    work.mkdir(parents=True)
    write_parts(work, rounds, chars)
    replies: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "read_file", "arguments": {"path": f"part_{k:02d}.txt"}}]}
        for k in range(rounds)
    ]
    replies.append({"content": "All parts read; no anomaly found."})
    summary = {"content": SUMMARY}
    script = {"replies": replies, "when_asked": {ASKED_HERE: summary, ASKED_ALONE: summary}}
    renderer = TemplateRenderer.from_file(TEMPLATE)
    # The stub counts usage with the cl100k files litellm ships, as nex does: else it falls back
    # to len // 4 and nex's drift correction moves the compaction points from run to run.
    prepare_environment()
    with stub_server(script, template=renderer) as stub:
        argv = [
            NEX, "-m", "local:stub-model", "-e", stub.url, "-C", str(work), "--autonomous",
            "--json", "--sandbox", "off", "--context-window", str(window),
            "--max-turns", str(rounds * 3), "Read every part file in order, then report anomalies.",
        ]  # fmt: skip
        proc = subprocess.run(
            argv,
            env=clean_env(home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        bodies, prompts, answers = stub.requests, list(stub.prompts), list(stub.answers)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    started = next((e for e in events if e.get("type") == "session.started"), None)
    journal: list[dict[str, Any]] = []
    if started is not None:
        path = home / "nex" / "sessions" / started["session"] / "journal.jsonl"
        journal = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    prefilled, ideal, breaks = measure(renderer, bodies, prompts, answers)
    return Prefill(
        len(bodies), prefilled, ideal, breaks, compaction_events(journal), proc.returncode
    )


def prefill(ctx: Context) -> list[Figure]:
    """The stub rows: no context pressure, then a 4,096-token window with compaction."""
    if not TEMPLATE.is_file():
        raise FileNotFoundError(f"{TEMPLATE} (the llama-cpp-python sdist: make peers)")
    rounds = ctx.settings.prefill_rounds
    figures = []
    for name, window, target in (
        ("no context pressure", ROOMY, 1.01),
        (f"{WINDOW:,}-token window, with compaction", WINDOW, 1.15),
    ):
        got = session(ctx.scratch / f"prefill-{window}", window=window, rounds=rounds)
        if got.exit_code != 0:
            raise RuntimeError(f"the {name} session exited {got.exit_code}")
        figures.append(
            figure(
                "prefill",
                f"stub (Qwen3-Coder template), {rounds} tool rounds, {name}",
                got.prefilled,
                "chars",
                ("ideal (only what is new)", got.ideal),
                target=at_most(target),
                note=f"{got.compactions} compaction events, {got.breaks} breaks in "
                f"{got.requests} requests",
            )
        )
    return figures
