"""Every in-process route of the DESIGN §1 table, end to end: `nex` as a subprocess against a
stub that speaks the route's wire format, one tool round trip each.

The claude: and codex: rows run their CLIs and are covered by the handler tests.
"""

from __future__ import annotations

from typing import Any

import pytest

from stubs.oai import StubServer
from stubs.ollama import ollama_server
from tests.conftest import SENTINEL_KEY, NexEnv, Result

pytestmark = pytest.mark.timeout(120)

TOOL_ROUND = {
    "replies": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo route-ok"}}]},
        {"echo": True},
    ]
}


def _run(nex_env: NexEnv, *args: str) -> Result:
    return nex_env.run(*args, "--context-window", "32768", "--json", "--autonomous", "hi there")


def _assert_tool_round(result: Result, requests: list[dict[str, Any]]) -> None:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    events = result.events
    tool = next(e for e in events if e["type"] == "tool.result")
    assert tool["ok"] and "route-ok" in tool["output"]
    final = [e for e in events if e["type"] == "message" and e.get("final")]
    assert final[-1]["content"].startswith("echo: hi there")
    assert len(requests) == 2


def _tool_message(body: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in body["messages"] if m["role"] == "tool")


@pytest.mark.parametrize("prefix", ["local", "llamacpp", "vllm"])
def test_openai_compatible_local_routes(nex_env: NexEnv, prefix: str) -> None:
    with StubServer(TOOL_ROUND, strict=True) as srv:
        result = _run(nex_env, "-m", f"{prefix}:coder-7b", "-e", srv.base_url)
        _assert_tool_round(result, srv.requests)
        assert srv.rejections == []
        # The prefix is stripped (vLLM reads a colon as a LoRA); no key leaves for a local server.
        assert {r["model"] for r in srv.requests} == {"coder-7b"}
        assert "route-ok" in _tool_message(srv.requests[1])["content"]
        assert all(h["authorization"] == "Bearer sk-no-key-required" for h in srv.headers)


def test_openai_route_sends_the_key(nex_env: NexEnv) -> None:
    nex_env.env["OPENAI_API_KEY"] = SENTINEL_KEY
    with StubServer(TOOL_ROUND, strict=True) as srv:
        result = _run(nex_env, "-m", "openai:gpt-4.1-mini", "-e", srv.url)
        _assert_tool_round(result, srv.requests)
        assert {r["model"] for r in srv.requests} == {"gpt-4.1-mini"}
        assert all(h["authorization"] == f"Bearer {SENTINEL_KEY}" for h in srv.headers)
    assert SENTINEL_KEY not in result.stdout + result.stderr


def test_openrouter_route_sends_its_key_and_attribution(nex_env: NexEnv) -> None:
    nex_env.env["OPENROUTER_API_KEY"] = SENTINEL_KEY
    with StubServer(TOOL_ROUND, strict=True) as srv:
        result = _run(nex_env, "-m", "openrouter:qwen/qwen3-coder", "-e", srv.url)
        _assert_tool_round(result, srv.requests)
        assert {r["model"] for r in srv.requests} == {"qwen/qwen3-coder"}
        for headers in srv.headers:
            assert headers["authorization"] == f"Bearer {SENTINEL_KEY}"
            assert headers["http-referer"] == "https://github.com/nexpy/nexpy"
            assert headers["x-title"] == "nexpy"


def test_doctor_names_a_missing_key(nex_env: NexEnv) -> None:
    with StubServer(TOOL_ROUND) as srv:
        result = nex_env.run("doctor", "-m", "openrouter:qwen/qwen3-coder", "-e", srv.url)
        assert srv.requests == []
    assert result.code == 1
    assert result.stdout.splitlines()[-1] == (
        "verdict: not usable: key: $OPENROUTER_API_KEY is not set; export OPENROUTER_API_KEY=…"
    )


def test_oai_compat_named_endpoint_with_key_env_and_headers(nex_env: NexEnv) -> None:
    nex_env.env["BOX_KEY"] = SENTINEL_KEY
    with StubServer(TOOL_ROUND, strict=True) as srv:
        nex_env.write_config(
            f'[endpoints.box]\nurl = "{srv.base_url}"\napi_key_env = "BOX_KEY"\n'
            'headers = { "X-Team" = "nexpy", "X-Trace" = "on" }\n'
        )
        result = _run(nex_env, "-m", "oai-compat:team-coder", "-e", "box")
        _assert_tool_round(result, srv.requests)
        assert {r["model"] for r in srv.requests} == {"team-coder"}
        for headers in srv.headers:
            assert headers["authorization"] == f"Bearer {SENTINEL_KEY}"
            assert (headers["x-team"], headers["x-trace"]) == ("nexpy", "on")
    plan = next(line for line in result.stderr.splitlines() if line.startswith("plan:"))
    assert "endpoint 'box'" in plan and "key=$BOX_KEY (set)" in plan


def test_oai_compat_without_an_endpoint_is_a_usage_error(nex_env: NexEnv) -> None:
    result = nex_env.run("-m", "oai-compat:x", "--autonomous", "hi")
    assert result.code == 2
    assert "needs an endpoint" in result.error_lines()[0]


@pytest.mark.parametrize("window", [None, "16384"])
def test_ollama_sends_num_ctx_and_completes_a_tool_round(
    nex_env: NexEnv, window: str | None
) -> None:
    with ollama_server(TOOL_ROUND, context_length=131072) as srv:
        args = ["-m", "ollama:qwen3:8b", "-e", srv.url]
        if window:
            args += ["--context-window", window]
        result = nex_env.run(*args, "--json", "--autonomous", "hi there")
        _assert_tool_round(result, srv.requests)
        # Without a flag the window is discovered from /api/show, capped at the num_ctx sent.
        assert srv.num_ctx == [int(window or 8192)] * 2
        assert {r["model"] for r in srv.requests} == {"qwen3:8b"}
        assert srv.requests[0]["tools"][0]["type"] == "function"
        # The tool call went back to Ollama in its own shape: arguments as an object.
        call = next(m for m in srv.requests[1]["messages"] if m.get("tool_calls"))
        assert call["tool_calls"][0]["function"]["arguments"] == {"command": "echo route-ok"}
        assert "route-ok" in _tool_message(srv.requests[1])["content"]


def test_ollama_host_is_honoured_without_e(nex_env: NexEnv) -> None:
    with ollama_server(TOOL_ROUND) as srv:
        nex_env.env["OLLAMA_HOST"] = f"127.0.0.1:{srv.port}"  # Ollama's own form: no scheme
        result = _run(nex_env, "-m", "ollama:qwen3:8b")
        _assert_tool_round(result, srv.requests)
        plan = next(line for line in result.stderr.splitlines() if line.startswith("plan:"))
        assert f"endpoint=http://127.0.0.1:{srv.port} (from routing table default)" in plan


def test_ollama_streaming_text_and_usage(nex_env: NexEnv) -> None:
    script = {"replies": [{"content": "Ollama says hello in pieces", "chunk_delay": 0.01}]}
    with ollama_server(script) as srv:
        result = _run(nex_env, "-m", "ollama:llama3.2", "-e", srv.url)
        assert result.code == 0, result.stderr
        events = result.events
        assert [e["content"] for e in events if e["type"] == "message" and e.get("final")] == [
            "Ollama says hello in pieces"
        ]
        usage = next(e for e in events if e["type"] == "usage")
        assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
        assert srv.requests[0]["stream"] is True


def test_stub_route_needs_no_server(nex_env: NexEnv) -> None:
    result = nex_env.run("-m", "stub:demo", "--json", "--autonomous", "show me")
    assert result.code == 0, result.stderr
    assert result.events[-1]["type"] == "session.ended"


def test_doctor_passes_on_each_stub_wire_format(nex_env: NexEnv) -> None:
    with StubServer({"default": {"content": "ok"}}, window=4096) as srv:
        oai = nex_env.run("doctor", "-m", "local:stub-model", "-e", srv.url)
    with ollama_server({"default": {"content": "ok"}}) as srv:
        oll = nex_env.run("doctor", "-m", "ollama:stub-model", "-e", srv.url)
    for result in (oai, oll):
        assert result.code == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].startswith("verdict: usable")
    assert "4,096 tokens (from the server's /props)" in oai.stdout
    assert "(from Ollama /api/show" in oll.stdout


# The integrity rule of an unstreamed body is per wire format (nexpy.integrity): an OpenAI
# chat completion needs a finish_reason, Ollama's native /api/chat body `"done": true` — its
# shape has no choices, and it must not be held to the OpenAI rule.
@pytest.mark.parametrize("finished", [True, False], ids=["done", "not-done"])
def test_ollama_unstreamed_body_is_judged_by_its_own_shape(nex_env: NexEnv, finished: bool) -> None:
    answer = "Ollama answers whole"
    second = {"content": answer} if finished else {"fault": "unfinished", "content": answer}
    script = {"replies": [{"fault": "empty"}, second], "default": {"content": answer}}
    with ollama_server(script) as srv:
        result = nex_env.run(
            "-m", "ollama:llama3.2", "-e", srv.url, "--context-window", "32768", "--autonomous",
            "hi there",
        )  # fmt: skip
        streams = [r["stream"] for r in srv.requests]
    assert result.code == 0, result.stderr
    assert result.stdout == answer + "\n"
    # done: the unstreamed retry is the answer; not done: a cut, asked again
    assert streams == ([True, False] if finished else [True, False, False])


def test_ollama_dead_kept_alive_connection_is_sent_again(nex_env: NexEnv) -> None:
    # Ollama restarted between two turns: the pooled connection is dead (see test_faults).
    dead = {"fault": "restarted"}
    script = {"replies": [TOOL_ROUND["replies"][0], dead], "default": {"content": "done"}}
    with ollama_server(script) as srv:
        result = nex_env.run(
            "-m", "ollama:llama3.2", "-e", srv.url, "--context-window", "32768", "--autonomous",
            "hi there",
        )  # fmt: skip
        chats = [r for r in srv.records if r["path"] == "/api/chat"]
    assert result.code == 0 and result.stdout == "done\n", result.stderr
    assert "retrying" not in result.stderr
    before, died, again = chats[-3:]
    assert died["port"] == before["port"] and again["port"] != died["port"]


def test_doctor_reports_what_the_server_cached_of_a_repeated_request(nex_env: NexEnv) -> None:
    cached = {"content": "ok", "usage": {"prompt_tokens_details": {"cached_tokens": 40}}}
    with StubServer({"default": {"content": "ok"}}) as srv:
        silent = nex_env.run("doctor", "-m", "local:stub-model", "-e", srv.url)
    with StubServer({"default": cached}) as srv:
        caching = nex_env.run("doctor", "-m", "local:stub-model", "-e", srv.url)
        sent = srv.requests
    (quiet,) = [line.split() for line in silent.stdout.splitlines() if "prompt cache" in line]
    assert " ".join(quiet[3:]) == "the server does not report cached tokens", quiet
    row = next(line for line in caching.stdout.splitlines() if "prompt cache" in line)
    assert row.split()[0] == "ok" and "prompt tokens processed, the rest cached" in row, row
    # llama.cpp's route asks the server to keep the cache.
    assert all(body.get("cache_prompt") is True for body in sent)
