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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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
# The replay server's context: the roomy session's last prompt in the tiny model's byte-level
# tokens (about one a character: ~70k), with room to spare.
SERVER_CTX = 131_072
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
    bodies: list[dict[str, Any]] = field(default_factory=list, repr=False)  # as the stub got them

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
        len(bodies), prefilled, ideal, breaks, compaction_events(journal), proc.returncode, bodies
    )


# -- the real llama-server: the recorded requests, replayed -------------------------------------
@dataclass
class Replayed:
    """What a one-slot `llama-server --jinja` processed of a recorded session, in its tokens."""

    requests: int
    processed: int  # sum of timings.prompt_n: prompt tokens the server evaluated
    cached: int  # sum of timings.cache_n: prompt tokens it took from its cache
    ideal: int  # tokens new since the previous request (see `new_tokens`)

    @property
    def ratio(self) -> float:
        return self.processed / self.ideal if self.ideal else float("nan")


def replay(base_url: str, bodies: list[dict[str, Any]]) -> Replayed:
    """Send each recorded request, in order, to a llama-server with one slot and a prompt cache,
    asking for one token (`max_tokens: 1`: the tiny model cannot play the session, but the prompt
    is all that matters here), and add up what it says it processed.

    The cache then holds each prompt plus one generated token, not the stub's answer, so a
    request's ideal counts that answer as new too: the tokens after the previous prompt, i.e.
    from the last assistant message on (the whole prompt for the first request). Summary
    requests add nothing to the ideal, as in the stub rows: what compaction costs is overhead.

    The server runs with its defaults otherwise: its host-memory prompt cache (`--cache-ram`)
    may serve a prompt from an earlier state, which is what a user's server does too."""
    processed = cached = ideal = 0
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for body in bodies:
            request: dict[str, Any] = {
                "messages": body["messages"],
                "max_tokens": 1,
                "cache_prompt": True,
                "stream": False,
            }
            if body.get("tools"):
                request["tools"] = body["tools"]
            response = client.post("/v1/chat/completions", json=request)
            response.raise_for_status()
            timings = response.json()["timings"]
            processed += int(timings["prompt_n"])
            cached += int(timings.get("cache_n") or 0)
            if not _summary_request(body):
                ideal += new_tokens(client, body)
    return Replayed(len(bodies), processed, cached, ideal)


def new_tokens(client: httpx.Client, body: dict[str, Any]) -> int:
    """Tokens of a request's prompt from its last assistant message on, as the server renders
    (`/apply-template`) and tokenizes (`/tokenize`) it."""
    messages, tools = body["messages"], body.get("tools")
    prompt = _render(client, messages, tools, generation=True)
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last < 0:
        return _count(client, prompt)
    # The previous prompt ended in the generation prompt (`<|im_start|>assistant\n`), which the
    # assistant message then starts with: that much of it is not new.
    head = _render(client, messages[:last], tools, generation=True)
    return _count(client, prompt) - _count(client, prompt[: common_prefix(prompt, head)])


def _render(
    client: httpx.Client, messages: list[dict[str, Any]], tools: Any, *, generation: bool
) -> str:
    body: dict[str, Any] = {"messages": messages, "add_generation_prompt": generation}
    if tools:
        body["tools"] = tools
    response = client.post("/apply-template", json=body)
    response.raise_for_status()
    return str(response.json()["prompt"])


def _count(client: httpx.Client, text: str) -> int:
    response = client.post("/tokenize", json={"content": text, "parse_special": True})
    response.raise_for_status()
    return len(response.json()["tokens"])


def real_server(ctx: Context, sessions: list[tuple[str, float, Prefill]]) -> list[Figure]:
    """The llama-server rows: each stub session's requests replayed on a fresh server."""
    from tests.peers.gguf_model import OK_CHAIN, write_model
    from tests.peers.llama_server import SERVER_BIN, LlamaCppServer

    if not SERVER_BIN.is_file():
        raise FileNotFoundError(f"{SERVER_BIN} (the C++ llama-server: make peers)")
    model = write_model(
        ctx.scratch / "qwen3-coder.gguf",
        template=TEMPLATE.read_text(encoding="utf-8"),
        chains=OK_CHAIN,
        context_length=SERVER_CTX,
    )
    figures: list[Figure] = []
    for name, target, session_ in sessions:
        # A fresh server per session: the previous session's prompts must not warm its cache.
        server = LlamaCppServer(model, ctx.scratch / f"llama-server-{len(figures)}.log", SERVER_CTX)
        try:
            got = replay(server.base_url, session_.bodies)
        finally:
            server.stop()
        figures.append(
            figure(
                "prefill",
                f"llama-server --jinja (tiny GGUF, Qwen3-Coder template), the {name} session "
                "replayed",
                got.processed,
                "tokens",
                ("ideal (only what is new)", got.ideal),
                target=at_most(target),
                note=f"sum of timings.prompt_n over {got.requests} requests, "
                f"{got.cached:,} from its cache",
            )
        )
    return figures


def prefill(ctx: Context) -> list[Figure]:
    """The stub rows: no context pressure, then a 4,096-token window with compaction; then the
    same two sessions replayed on the real llama-server."""
    if not TEMPLATE.is_file():
        raise FileNotFoundError(f"{TEMPLATE} (the llama-cpp-python sdist: make peers)")
    rounds = ctx.settings.prefill_rounds
    figures = []
    sessions: list[tuple[str, float, Prefill]] = []
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
        sessions.append((name, target, got))
    if ctx.settings.prefill_real:
        figures += real_server(ctx, sessions)
    return figures
