"""Issue 3 acceptance: every request fits the model's real window, for sessions of any length.

The stubs here enforce a window the way the C++ llama-server does (a 400
`exceed_context_size_error` carrying `n_ctx`) and count tokens with the same cl100k encoding nex
uses (tests/conftest.py points TIKTOKEN_CACHE_DIR at litellm's copy), and they run strict, so a
request a chat template would reject is refused too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench.prefill import ASKED_HERE
from nexpy.agent import Agent, create
from nexpy.budget import TokenCounter
from nexpy.config import Config
from nexpy.events import Emitter
from nexpy.handler import HandlerOptions
from nexpy.messages import assistant, normalize, system, tool_result, user
from nexpy.plan import SpawnRequest, plan_spawn
from nexpy.reply import TextCallback
from nexpy.session import Session
from stubs.oai import StubServer, estimate_prompt_tokens, stub_server
from stubs.strict import validate
from tests.conftest import NexEnv

pytestmark = pytest.mark.timeout(600)

TASK = "TASK-7f3a: audit the data files in this directory and report every anomaly you find."


def _user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")


def _write_data(work: Path, files: int = 8, chars: int = 40_000) -> None:
    """Big, varied text files: numbers and words, so tokens per char are realistic."""
    for n in range(files):
        lines = [
            f"row {i:05d} file={n} value={(i * 7919 + n) % 10007} status=ok"
            for i in range(chars // 40)
        ]
        (work / f"data_{n}.txt").write_text("\n".join(lines) + "\n")


def _check_requests(server: StubServer, window: int) -> list[int]:
    """Every request the stub took fits, is valid, and carries the task; returns their sizes."""
    assert server.overflows == [], f"requests over the {window}-token window: {server.overflows}"
    assert server.rejections == [], server.rejections
    sizes = []
    for index, body in enumerate(server.requests):
        assert validate(body["messages"]) is None, index
        sizes.append(estimate_prompt_tokens(body))
        if body.get("tools"):  # a summary request carries an excerpt, not the conversation
            assert TASK in _user_text(body), f"request {index} lost the task"
    assert max(sizes) <= window
    return sizes


class Reactive:
    """Wraps the real model: queues the stub's reply for each request just before it is sent.

    Summary requests (at the end of the conversation, or alone without tools) come whenever
    compaction needs one, so a fixed script could not know where they fall; this answers them
    with a summary and everything else from `steps`.
    It also keeps what nex counted for each request, to compare with the stub's own count.
    """

    def __init__(self, inner: Any, server: StubServer, steps: Iterator[dict[str, Any]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.server = server
        self.steps = steps
        self.counter = TokenCounter()
        self.counted: list[int] = []
        self.summaries = 0

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Any:
        if tools is None or ASKED_HERE in str(messages[-1].get("content")):
            self.summaries += 1
            reply: dict[str, Any] = {
                "content": f"Summary {self.summaries}: read data files, found anomalies in rows "
                "00012 and 00345; still to check the remaining files."
            }
        else:
            reply = next(self.steps)
        self.server.script.add(reply)
        self.counted.append(self.counter.messages(messages, tools))
        return await self.inner.complete(messages, tools, on_text, max_tokens=max_tokens)


def _steps(files: int) -> Iterator[dict[str, Any]]:
    """Tool rounds with big outputs; every 12th reply is a final answer ending a user turn."""
    n = 0
    while True:
        n += 1
        if n % 12 == 0:
            yield {"content": f"Checked batch {n // 12}; anomalies so far are listed above."}
        elif n % 5 == 0:
            yield {
                "tool_calls": [
                    {"name": "read_file", "arguments": {"path": f"data_{n % files}.txt"}},
                    {"name": "grep", "arguments": {"pattern": "value=1[0-9]{3}", "path": "."}},
                ]
            }
        elif n % 3 == 0:
            yield {"tool_calls": [{"name": "bash", "arguments": {"command": f"seq {n} 4000"}}]}
        else:
            yield {
                "tool_calls": [
                    {"name": "read_file", "arguments": {"path": f"data_{n % files}.txt"}}
                ]
            }


def _agent(url: str, home: Path, work: Path, name: str) -> tuple[Agent, Session, list[dict]]:
    plan = plan_spawn(SpawnRequest(model="local:stub-model", endpoint=url), Config())
    session = Session.create(home, name)
    session.lock()
    events: list[dict] = []
    agent = create(plan, session, Emitter(name, [events.append]), HandlerOptions(workdir=work))
    return agent, session, events


async def test_300_turns_of_big_tool_outputs_fit_a_4096_window(tmp_path: Path) -> None:
    window, turns = 4096, 300
    work = tmp_path / "work"
    work.mkdir()
    _write_data(work)
    with stub_server({"default": {"content": "unscripted"}}, strict=True, window=window) as srv:
        agent, session, _events = _agent(srv.url, tmp_path / "home", work, "long")
        model = Reactive(agent.model, srv, _steps(8))
        agent.model = model
        started = time.monotonic()
        try:
            await agent.send(TASK)
            n = 0
            while agent.totals.turns < turns:
                n += 1
                # Now and then a long message from the person, too.
                extra = " Also look at the totals." * (60 if n % 4 == 0 else 0)
                await agent.send(f"Next batch {n}, please.{extra}")
        finally:
            session.close()
        seconds = time.monotonic() - started
        sizes = _check_requests(srv, window)
        theirs = [estimate_prompt_tokens(body) for body in srv.requests]

    assert agent.totals.turns >= turns
    assert agent.budget.window == window and "props" in agent.budget.source
    # nex's count agrees with the stub's (same tokenizer, different framing) within 5%.
    drift = [abs(ours - stub) / stub for ours, stub in zip(model.counted, theirs, strict=True)]
    assert max(drift) <= 0.05, max(drift)
    compactions = [e for e in session.entries() if e["kind"] == "compaction"]
    assert {"drop_turns", "summary"} <= {e["step"] for e in compactions}
    assert model.summaries > 0
    # A resume sees a history a strict server accepts, still led by the task.
    resumed = normalize([system("s"), *session.messages()])
    assert validate(resumed) is None and resumed[1]["content"].startswith(TASK)
    print(
        f"\n300-turn session: {len(sizes)} requests ({model.summaries} summaries), "
        f"largest {max(sizes)} of {window} tokens, count drift ≤ {100 * max(drift):.1f}%, "
        f"{len(compactions)} compaction steps, {seconds:.1f} s"
    )


def test_long_autonomous_run_through_nex_fits_the_window(nex_env: NexEnv) -> None:
    """The same through the `nex` command: the window is found on the server (/props)."""
    _write_data(nex_env.work, files=4)
    rounds = [
        {
            "content": f"Reading part {n}.",
            "tool_calls": [{"name": "read_file", "arguments": {"path": f"data_{n % 4}.txt"}}],
        }
        for n in range(40)
    ]
    script = {"replies": rounds, "default": {"content": "All files checked."}}
    with stub_server(script, strict=True, window=4096) as srv:
        result = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--chat", "long", "--json", "--autonomous",
            TASK, timeout=300,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        sizes = _check_requests(srv, 4096)
    contexts = [e for e in result.events if e["type"] == "context"]
    assert contexts and all(e["window"] == 4096 for e in contexts)
    assert any("compacted" in e.get("message", "") for e in result.events)
    assert len(sizes) > 40
    kinds = {e.get("step") for e in nex_env.journal("long") if e["kind"] == "compaction"}
    assert "tool_outputs" in kinds and "drop_turns" in kinds


class _Silent(StubServer):
    """A server that enforces its window but does not advertise it (like llama-cpp-python)."""

    async def _props(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 404, "message": "File Not Found"}}, status=404)

    async def _models(self, request: web.Request) -> web.Response:
        entry = {"id": self.script.model, "object": "model", "owned_by": "stub"}
        return web.json_response({"object": "list", "data": [entry]})


def test_llamacpp_overflow_error_teaches_the_window(nex_env: NexEnv) -> None:
    (nex_env.work / "big.txt").write_text(
        "".join(f"line {i} of the big file\n" for i in range(600))
    )
    script = {
        "replies": [
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "big.txt"}}]},
            {"tool_calls": [{"name": "bash", "arguments": {"command": "seq 1 900"}}]},
        ],
        "default": {"content": "Done: the file has 600 lines."},
    }
    srv = _Silent(script, strict=True, window=2048)
    with srv:
        result = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--json", "--autonomous", "count the lines"
        )
        assert result.code == 0, result.stderr
        assert srv.rejections == []
        overflows = srv.overflows
        requests = srv.requests
    assert len(overflows) == 1, overflows
    refused = overflows[0][0]
    # Every request after the refusal fits the window the error named.
    assert all(estimate_prompt_tokens(b) <= 2048 for b in requests[refused + 1 :])
    assert any("count the lines" in _user_text(b) for b in requests[refused + 1 :])
    warnings = [e["message"] for e in result.events if e["type"] == "warning"]
    assert any("2048" in w for w in warnings), warnings
    assert result.events[-1]["type"] == "session.ended"
    assert result.events[-1]["status"] == "completed"
    assert result.stdout and "Done: the file has 600 lines." in result.stdout


def _journal_311(home: Path, name: str) -> int:
    """A session of 311 messages (a task, then tool rounds and answers) far over 32k tokens."""
    session = Session.create(home, name)
    counter = TokenCounter()
    messages: list[dict[str, Any]] = [user(TASK)]
    n = 0
    while len(messages) < 311:
        n += 1
        if len(messages) == 310:
            messages.append(user("What is left?"))
            break
        call = {
            "id": f"call_{n}",
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": f"report {n}"})},
        }
        messages.append(assistant(f"Running report {n}.", [call]))
        body = "".join(f"report {n} line {i}: value {(i * 31 + n) % 977}\n" for i in range(60))
        messages.append(tool_result(f"call_{n}", body, "bash"))
    with session:
        session.lock()
        session.append("init", model="local:stub-model", handler="nex")
        for message in messages:
            session.append("message", message=message)
    assert len(messages) == 311
    return counter.messages(messages)


def test_resuming_a_311_message_journal_on_a_32k_window(nex_env: NexEnv) -> None:
    size = _journal_311(nex_env.home, "big")
    assert size > 40_000  # well over the window
    with stub_server({"default": {"echo": True}}, strict=True, window=32_768) as srv:
        result = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--chat", "big", "--autonomous", "continue"
        )
        assert result.code == 0, result.stderr
        assert result.stdout.startswith("echo: continue")
        # Compaction happened before anything was sent: no request was refused.
        assert srv.overflows == [] and srv.rejections == []
        requests = srv.requests
    assert all(estimate_prompt_tokens(b) <= 32_768 for b in requests)
    answer = requests[-1]
    assert TASK in _user_text(answer) and "continue" in _user_text(answer)
    journal = nex_env.journal("big")
    resumed_at = max(i for i, e in enumerate(journal) if e["kind"] == "init")
    kinds = [e["kind"] for e in journal[resumed_at:]]
    # The task's message, then compaction, and only then the first answer.
    first_answer = next(
        i
        for i, e in enumerate(journal[resumed_at:])
        if e.get("message", {}).get("role") == "assistant"
    )
    assert "compaction" in kinds[:first_answer]


def test_a_task_that_cannot_fit_stops_with_exit_3(nex_env: NexEnv) -> None:
    huge = "Please consider this requirement carefully. " * 400  # ~3,200 tokens
    with stub_server({"default": {"content": "never"}}, strict=True, window=2048) as srv:
        result = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--json", "--autonomous", huge
        )
        sent = srv.requests
    assert result.code == 3, result.stderr
    assert sent == [], "nothing that cannot fit may be sent"
    errors = result.error_lines()
    assert len(errors) == 1 and "context is full" in errors[0], result.stderr
    assert "--context-window" in errors[0] and "/compact" in errors[0] and "-c" in errors[0]
    assert "Traceback" not in result.stderr
    ended = result.events[-1]
    assert ended["type"] == "session.ended"
    assert ended["exit_reason"] == "context_limit" and ended["status"] == "limit"
