"""The Responses (codex) and Messages (claude) stubs: the SSE the real CLIs accepted, scripted
replies and faults, and what they record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from stubs.anthropic import anthropic_server
from stubs.responses import responses_server

ROOT = Path(__file__).resolve().parents[2]


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; each data object repeats its name as `type`."""
    events = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def post_responses(url: str, text: str = "hi") -> httpx.Response:
    body = {
        "model": "qwen3-coder",
        "stream": True,
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        ],
    }
    return httpx.post(url + "/responses", json=body, headers={"x-probe": "1"}, timeout=5)


def test_responses_text_streams_the_events_codex_accepted_in_order() -> None:
    with responses_server([{"content": "Hello from stub"}]) as srv:
        resp = post_responses(srv.url)
        (request,) = srv.requests
    assert resp.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in sse(resp.text)]
    deltas = names.count("response.output_text.delta")
    assert deltas >= 1
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    events = dict(sse(resp.text))
    text = "".join(d["delta"] for n, d in sse(resp.text) if n == "response.output_text.delta")
    assert text == "Hello from stub" == events["response.output_text.done"]["text"]
    completed = events["response.completed"]["response"]
    assert completed["status"] == "completed" and completed["usage"]["output_tokens"] > 0
    assert request["path"] == "/v1/responses" and request["headers"]["x-probe"] == "1"
    assert request["body"]["model"] == "qwen3-coder"


def test_responses_function_call_and_echo() -> None:
    call = {"name": "exec_command", "arguments": {"cmd": "echo hi"}, "id": "call_7"}
    with responses_server({"replies": [{"tool_calls": [call]}], "default": {"echo": True}}) as srv:
        first = sse(post_responses(srv.url).text)
        second = sse(post_responses(srv.url, "say this").text)
    names = [n for n, _ in first]
    assert names[2:4] == ["response.output_item.added", "response.function_call_arguments.delta"]
    assert "response.function_call_arguments.done" in names
    item = dict(first)["response.output_item.done"]["item"]
    assert item["type"] == "function_call" and item["call_id"] == "call_7"
    assert json.loads(item["arguments"]) == {"cmd": "echo hi"}
    assert dict(second)["response.output_text.done"]["text"] == "echo: say this"


def test_responses_faults_are_http_errors_or_a_failed_response() -> None:
    body = {"error": {"message": "no", "type": "invalid_request_error"}}
    script = [{"fault": "status", "status": 400, "body": body}, {"fault": "stream_error"}]
    with responses_server(script) as srv:
        refused = post_responses(srv.url)
        failed = sse(post_responses(srv.url).text)
    assert refused.status_code == 400 and refused.json() == body
    assert failed[-1][0] == "response.failed"
    assert failed[-1][1]["response"]["error"]["message"].startswith("stub fault")


def post_messages(url: str, text: str = "hi", **extra: Any) -> httpx.Response:
    content = [{"type": "text", "text": "<system-reminder>x</system-reminder>"}]
    content.append({"type": "text", "text": text})
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    return httpx.post(url + "/v1/messages?beta=true", json={**body, **extra}, timeout=5)


def test_messages_text_and_tool_use_stream_as_claude_reads_them() -> None:
    call = {"name": "Bash", "arguments": {"command": "ls"}}
    with anthropic_server([{"content": "Hello"}, {"tool_calls": [call]}]) as srv:
        assert httpx.head(srv.url + "/", timeout=5).status_code == 200
        text = sse(post_messages(srv.url).text)
        tool = sse(post_messages(srv.url).text)
        requests = srv.requests
    names = [n for n, _ in text]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(d["delta"]["text"] for n, d in text if n == "content_block_delta") == "Hello"
    assert dict(text)["message_delta"]["delta"]["stop_reason"] == "end_turn"
    start = dict(tool)["content_block_start"]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "Bash"
    partial = "".join(d["delta"]["partial_json"] for n, d in tool if n == "content_block_delta")
    assert json.loads(partial) == {"command": "ls"}
    assert dict(tool)["message_delta"]["delta"]["stop_reason"] == "tool_use"
    assert [r["path"] for r in requests if r["method"] == "POST"] == ["/v1/messages"] * 2
    assert requests[-1]["query"] == "beta=true"


def test_messages_echo_skips_system_reminders_and_faults_use_the_api_error_body() -> None:
    script = {"replies": [{"echo": True}, {"fault": "status", "status": 529}]}
    with anthropic_server(script) as srv:
        whole = post_messages(srv.url, "the words", stream=False).json()
        overloaded = post_messages(srv.url)
    assert whole["content"] == [{"type": "text", "text": "echo: the words"}]
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"


def test_both_stubs_print_their_url_on_the_command_line() -> None:
    for module, suffix in (("stubs.responses", "/v1"), ("stubs.anthropic", "")):
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith(suffix)
            if module == "stubs.responses":
                assert post_responses(url).status_code == 200
            else:
                assert post_messages(url).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
