"""Reasoning models: `nex` as a subprocess against the scripted stub on a real socket.

The thinking arrives as `reasoning_content` (llama.cpp, vLLM), `reasoning` (OpenRouter) or
inline `<think>` in the content, tags split across chunks; it never reaches stdout, `--json`
carries it as a `reasoning` event, the journal keeps it on its turn, and a resumed session sends
it back only to a model whose template reads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stubs.oai import stub_server
from tests.conftest import NexEnv

pytestmark = pytest.mark.timeout(120)

THOUGHT = "The user wants a greeting. Keep it short and plain, no tool needed here."
ANSWER = "Hello there."


def _run(nex_env: NexEnv, url: str, *args: str, model: str = "local:stub-model") -> Any:
    return nex_env.run("-m", model, "-e", url, "--autonomous", *args)


def _assistant_turns(nex_env: NexEnv, chat: str) -> list[dict[str, Any]]:
    return [
        e["message"]
        for e in nex_env.journal(chat)
        if e["kind"] == "message" and e["message"]["role"] == "assistant"
    ]


@pytest.mark.parametrize(
    "reply",
    [
        {"reasoning": THOUGHT, "content": ANSWER},
        {"reasoning": THOUGHT, "reasoning_field": "reasoning", "content": ANSWER},
        {"content": f"<think>{THOUGHT}</think>\n\n{ANSWER}", "chunk_size": 3},
        # The template opened the think in the prompt: only its close is streamed.
        {"content": f"{THOUGHT}</think>\n\n{ANSWER}", "chunk_size": 5},
    ],
    ids=["reasoning_content", "reasoning", "inline-think-split-tags", "bare-close"],
)
def test_thinking_never_reaches_stdout_and_is_journaled(
    nex_env: NexEnv, reply: dict[str, Any]
) -> None:
    with stub_server([reply], strict=True) as srv:
        run = _run(nex_env, srv.url, "--chat", "t", "hi")
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == ANSWER
    assert "think" not in run.stdout and "greeting" not in run.stdout + run.stderr
    assert re.search(r"\(thought for ≈\d+ tokens\)", run.stderr)
    (turn,) = _assistant_turns(nex_env, "t")
    assert turn["content"] == ANSWER
    assert turn["reasoning_content"] == THOUGHT


def test_json_carries_a_reasoning_event_before_the_answer(nex_env: NexEnv) -> None:
    with stub_server([{"reasoning": THOUGHT, "content": ANSWER}], strict=True) as srv:
        run = _run(nex_env, srv.url, "--json", "hi")
    assert run.code == 0, run.stderr
    kinds = [e["type"] for e in run.events]
    thought = next(e for e in run.events if e["type"] == "reasoning")
    assert thought["content"] == THOUGHT and thought["session"] and thought["ts"]
    answer = [e for e in run.events if e["type"] == "message" and e["role"] == "assistant"]
    assert [e["content"] for e in answer] == [ANSWER]
    assert kinds.index("reasoning") < kinds.index("message", kinds.index("turn.started"))
    assert all(THOUGHT not in str(e.get("content")) for e in answer)


@pytest.mark.parametrize(
    ("model", "sent_back"),
    [("local:stub-model", False), ("local:Qwen3-8B", True)],
)
def test_a_resumed_session_sends_thinking_back_only_where_the_template_reads_it(
    nex_env: NexEnv, model: str, sent_back: bool
) -> None:
    call = {"name": "bash", "arguments": {"command": "echo hi"}}
    script = {
        "replies": [
            {"reasoning": "Run a command first.", "tool_calls": [call]},
            {"reasoning": THOUGHT, "content": ANSWER},
        ],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        first = _run(nex_env, srv.url, "--chat", "r", "hi", model=model)
        second = _run(nex_env, srv.url, "--chat", "r", "again", model=model)
        assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
        assert second.stdout.strip() == "echo: again"
        assert srv.rejections == []
        requests = srv.requests
    thoughts = [t.get("reasoning_content") for t in _assistant_turns(nex_env, "r")]
    assert thoughts == ["Run a command first.", THOUGHT, None]
    sent = [m for m in requests[-1]["messages"] if m["role"] == "assistant"]
    assert len(sent) == 2
    if sent_back:
        assert [m.get("reasoning_content") for m in sent] == ["Run a command first.", THOUGHT]
    else:
        assert all("reasoning_content" not in m for m in sent)
    # Byte-stable history: the earlier turns are sent the same in every later request.
    assert requests[2]["messages"][: len(requests[1]["messages"])] == requests[1]["messages"]


@pytest.mark.parametrize("fault", ["cut", "unfinished"])
def test_a_stream_cut_while_thinking_is_retried_and_the_answer_is_whole(
    nex_env: NexEnv, fault: str
) -> None:
    """A cut while only thinking has streamed is a cut (retried), not an empty answer."""
    broken = {"reasoning": THOUGHT, "content": ANSWER, "fault": fault, "after_chunks": 4}
    if fault == "unfinished":  # the thinking and nothing after it, never finished
        broken = {"reasoning": THOUGHT, "content": "", "fault": fault}
    with stub_server([broken, {"reasoning": THOUGHT, "content": ANSWER}], strict=True) as srv:
        run = _run(nex_env, srv.url, "--chat", "c", "hi")
        assert len(srv.requests) == 2
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == ANSWER
    assert "cut mid-answer" in run.stderr
    (turn,) = _assistant_turns(nex_env, "c")
    assert turn["reasoning_content"] == THOUGHT  # the last attempt's, not two of them


def test_doctor_reports_what_it_knows_of_the_template(nex_env: NexEnv) -> None:
    """`nex doctor`: the rules learned for this endpoint and model, and the template /props
    publishes (the stub's has no tools and does not read the thinking)."""
    with stub_server({"default": {"echo": True}}, window=4096) as srv:
        store = nex_env.home / "adaptations.json"
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({f"{srv.url} Qwen3-8B": ["single-tool-call"]}))
        run = nex_env.run("doctor", "-m", "local:Qwen3-8B", "-e", srv.url)
    rows = {
        m.group(1): m.group(2)
        for line in run.stdout.splitlines()
        if (m := re.match(r"\s+info\s+(\S+(?: \S+)?)\s{2,}(.*)", line))
    }
    assert rows["template"].endswith("characters from /props"), run.stdout
    assert rows["parallel calls"] == "one call per turn (learned: single-tool-call)"
    assert rows["system role"] == "supported (the published template)"
    assert rows["tool support"] == "tools described in the prompt (so the published template says)"
    assert rows["tool-call ids"] == "any (the published template)"
    assert rows["reasoning"].endswith("(a family that reads it)")


def test_a_published_template_that_reads_thinking_gets_it_back_whatever_the_name(
    nex_env: NexEnv, tmp_path: Path
) -> None:
    """llama.cpp publishes its template in /props: one that reads reasoning_content gets it,
    even for a model whose name says no family."""
    template = tmp_path / "reads.jinja"
    template.write_text(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.reasoning_content or '' }}"
        "{{ m.content or '' }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    script = {"replies": [{"reasoning": THOUGHT, "content": ANSWER}], "default": {"echo": True}}
    with stub_server(script, window=4096, template=template) as srv:
        first = _run(nex_env, srv.url, "--chat", "p", "hi", model="local:my-model")
        second = _run(nex_env, srv.url, "--chat", "p", "again", model="local:my-model")
        assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
        prompt = srv.prompts[-1]
        (sent,) = [m for m in srv.requests[-1]["messages"] if m["role"] == "assistant"]
    assert sent["reasoning_content"] == THOUGHT
    assert prompt is not None and f"<|assistant|>{THOUGHT}{ANSWER}" in prompt
