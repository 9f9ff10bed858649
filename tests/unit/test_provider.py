"""The litellm model against respx-mocked servers: classification, retries, dedup of retried
text, the empty-stream fallback, tool calls written as text, route parameters and headers.

litellm's async calls go through aiohttp unless DISABLE_AIOHTTP_TRANSPORT is set; respx only
sees httpx (DESIGN §8).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from nexpy.agent import build_model
from nexpy.config import Config
from nexpy.config_file import EndpointConfig
from nexpy.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ContextOverflow,
    NotFoundError,
    ProviderError,
    TransientError,
)
from nexpy.events import Emitter
from nexpy.plan import SpawnPlan, SpawnRequest, plan_spawn
from nexpy.provider import DEFAULT_IDLE_TIMEOUT, LitellmModel, idle_timeout_from_env
from nexpy.reply import Reply

BASE = "http://llm.test:8080/v1"
CHAT = BASE + "/chat/completions"
USER = [{"role": "user", "content": "hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]


@pytest.fixture(autouse=True)
def _httpx_transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
    monkeypatch.delenv("NEX_IDLE_TIMEOUT", raising=False)
    yield


def _plan(model: str = "local:m", endpoint: str | None = BASE, **config: Any) -> SpawnPlan:
    return plan_spawn(SpawnRequest(model, endpoint), Config(**config), environ={})


def _sse(*deltas: dict[str, Any], finish: str = "stop", usage: bool = True) -> bytes:
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    out += [event({**head, "choices": [{"index": 0, "delta": d}]}) for d in deltas]
    out.append(event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    if usage:
        out.append(
            event(
                {
                    **head,
                    "choices": [],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                }
            )
        )
    return b"".join(out) + b"data: [DONE]\n\n"


def _stream(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"message": message, "type": "server_error", "code": status}}
    return httpx.Response(status, json=body, headers=headers or {})


def _completion(message: dict[str, Any]) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "c2",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
    )


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def _complete(
    model: LitellmModel, tools: list[dict[str, Any]] | None = None
) -> tuple[Reply, list[str]]:
    shown: list[str] = []
    reply = await model.complete(USER, tools, shown.append)
    return reply, shown


def _model(plan: SpawnPlan | None = None, **kw: Any) -> tuple[LitellmModel, Sleeps]:
    sleeps = Sleeps()
    return LitellmModel(plan or _plan(), sleep=sleeps, **kw), sleeps


# -- a plain answer ------------------------------------------------------------------------------
@respx.mock
async def test_streamed_answer_text_usage_and_finish() -> None:
    respx.post(CHAT).mock(return_value=_stream(_sse({"content": "Hel"}, {"content": "lo"})))
    reply, shown = await _complete(_model()[0])
    assert (reply.content, shown, reply.finish_reason) == ("Hello", ["Hel", "lo"], "stop")
    assert reply.usage == {"prompt_tokens": 7, "completion_tokens": 3}


# -- classification ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "kind", "needle"),
    [
        (_error(401, "invalid api key"), AuthError, "refused the credentials (invalid api key)"),
        (_error(403, "forbidden"), AuthError, "HTTP 403"),
        (_error(404, "model 'm' not found"), NotFoundError, "model 'm' not found"),
        (
            _error(400, "bad role order"),
            BadRequestError,
            "HTTP 400 from http://llm.test:8080/v1: bad role order",
        ),
        (
            httpx.Response(
                400,
                json={
                    "error": {
                        "code": 400,
                        "message": "the request exceeds the available context size",
                        "type": "exceed_context_size_error",
                        "n_prompt_tokens": 9000,
                        "n_ctx": 4096,
                    }
                },
            ),
            ContextOverflow,
            "does not fit",
        ),
    ],
)
@respx.mock
async def test_errors_that_are_not_retried(
    response: httpx.Response, kind: type, needle: str
) -> None:
    route = respx.post(CHAT).mock(return_value=response)
    model, sleeps = _model()
    with pytest.raises(kind) as info:
        await _complete(model)
    assert needle in info.value.line()
    assert route.call_count == 1 and sleeps == []
    if kind is ContextOverflow:
        assert info.value.n_ctx == 4096


@pytest.mark.parametrize(
    ("response", "needle"),
    [
        (_error(500, "boom"), "HTTP 500 from http://llm.test:8080/v1: boom"),
        (_error(503, "loading model"), "HTTP 503 from http://llm.test:8080/v1: loading model"),
        (
            httpx.Response(
                502,
                text="<html><head><title>502 Bad Gateway</title></head></html>",
                headers={"content-type": "text/html"},
            ),
            "an HTML page ('502 Bad Gateway'), likely from a proxy",
        ),
        (
            httpx.Response(500, text="Internal Server Error"),
            "HTTP 500 from http://llm.test:8080/v1: Internal Server Error",
        ),
    ],
)
@respx.mock
async def test_server_errors_are_retried_then_succeed(
    response: httpx.Response, needle: str
) -> None:
    route = respx.post(CHAT).mock(side_effect=[response, _stream(_sse({"content": "ok"}))])
    warnings: list[str] = []
    model, sleeps = _model(on_retry=lambda e, n, d: warnings.append(e.line()))
    reply, shown = await _complete(model)
    assert (reply.content, shown, route.call_count, len(sleeps)) == ("ok", ["ok"], 2, 1)
    assert needle in warnings[0]


@respx.mock
async def test_retry_after_is_honoured() -> None:
    limited = _error(429, "slow down", headers={"Retry-After": "3"})
    respx.post(CHAT).mock(side_effect=[limited, _stream(_sse({"content": "ok"}))])
    model, sleeps = _model()
    reply, _ = await _complete(model)
    assert reply.content == "ok" and sleeps == [3.0]


@respx.mock
async def test_gives_up_after_four_attempts_with_one_line() -> None:
    route = respx.post(CHAT).mock(return_value=_error(503, "overloaded"))
    model, sleeps = _model()
    with pytest.raises(TransientError) as info:
        await _complete(model)
    assert route.call_count == 4 and len(sleeps) == 3
    line = info.value.line()
    assert "(after 4 attempts)" in line and "\n" not in line


@respx.mock
async def test_read_timeout_is_a_stall_naming_the_idle_timeout() -> None:
    respx.post(CHAT).mock(side_effect=httpx.ReadTimeout("timed out"))
    model, _ = _model(idle_timeout=7, max_attempts=1)
    with pytest.raises(TransientError, match="sent no reply for 7 s"):
        await _complete(model)


class _CutStream(httpx.AsyncByteStream):
    """A 200 stream that sends `head` and then loses its connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


@respx.mock
async def test_cut_stream_is_retried_without_showing_text_twice() -> None:
    first_two = _sse({"content": "Hello "}, {"content": "wor"}).split(b"\n\n")[:3]
    cut = httpx.Response(
        200,
        stream=_CutStream(b"\n\n".join(first_two) + b"\n\n"),
        headers={"content-type": "text/event-stream"},
    )
    whole = _stream(_sse({"content": "Hello "}, {"content": "world"}))
    respx.post(CHAT).mock(side_effect=[cut, whole])
    warnings: list[str] = []
    model, _ = _model(on_retry=lambda e, n, d: warnings.append(e.line()))
    reply, shown = await _complete(model)
    assert reply.content == "Hello world"
    assert "".join(shown) == "Hello world"
    assert "cut mid-answer" in warnings[0]


# -- empty replies -------------------------------------------------------------------------------
@respx.mock
async def test_empty_stream_is_retried_without_streaming() -> None:
    route = respx.post(CHAT).mock(
        side_effect=[_stream(b""), _completion({"role": "assistant", "content": "fine"})]
    )
    reply, shown = await _complete(_model()[0])
    assert (reply.content, shown) == ("fine", ["fine"])
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [bool(b.get("stream")) for b in bodies] == [True, False]


@respx.mock
async def test_empty_stream_then_the_template_error_is_one_line_not_retried() -> None:
    # llama-cpp-python: a chat-template exception streams as nothing, but is a 500 when not
    # streamed; the non-streamed retry is what lets the person read the reason, and the same
    # conversation would fail the same way again.
    # Its words name an adaptation (tools-in-prompt), tried once; refused again, it is the end.
    template_error = _error(500, "Conversation roles must alternate user/assistant/user/assistant")
    route = respx.post(CHAT).mock(side_effect=[_stream(b""), template_error, template_error])
    model = _model()[0]
    with pytest.raises(BadRequestError) as info:
        await _complete(model)
    assert "the chat template rejected the conversation (Conversation roles must" in str(info.value)
    assert "--jinja" in info.value.hint
    assert model.adaptations == ["tools-in-prompt"]
    assert route.call_count == 3


@respx.mock
async def test_a_reset_after_an_empty_stream_keeps_the_retry_unstreamed() -> None:
    # The next request on a connection llama-cpp-python left after an empty stream may be reset.
    reset = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    ok = _completion({"role": "assistant", "content": "fine"})
    route = respx.post(CHAT).mock(side_effect=[_stream(b""), reset, ok])
    reply, _ = await _complete(_model()[0])
    assert reply.content == "fine"
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [bool(b.get("stream")) for b in bodies] == [True, False, False]


@respx.mock
async def test_html_page_with_200_is_not_retried() -> None:
    page = httpx.Response(
        200, text="<html><title>Open WebUI</title></html>", headers={"content-type": "text/html"}
    )
    route = respx.post(CHAT).mock(return_value=page)
    with pytest.raises(ProviderError, match="answered with an HTML page") as info:
        await _complete(_model()[0])
    assert not info.value.retryable and route.call_count == 1


# -- tool calls ----------------------------------------------------------------------------------
TEXT_CALLS = {
    "qwen3-coder xml": (
        "<tool_call>\n<function=bash>\n<parameter=command>\nls\n</parameter>\n</function>\n"
        "</tool_call>"
    ),
    "hermes": '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>',
    "fenced json": '```json\n{"name": "bash", "arguments": {"command": "ls"}}\n```',
}


@pytest.mark.parametrize("fmt", list(TEXT_CALLS))
@respx.mock
async def test_text_call_recovered_from_a_stream(fmt: str) -> None:
    text = "I will list the files.\n" + TEXT_CALLS[fmt]
    pieces = [{"content": text[i : i + 5]} for i in range(0, len(text), 5)]
    respx.post(CHAT).mock(return_value=_stream(_sse(*pieces)))
    reply, shown = await _complete(_model()[0], TOOLS)
    assert "".join(shown) == "I will list the files.\n"
    assert reply.content == "I will list the files." and reply.calls_from_text
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.tool_calls
    ] == [("bash", {"command": "ls"})]


@pytest.mark.parametrize("fmt", list(TEXT_CALLS))
@respx.mock
async def test_text_call_recovered_from_a_non_streamed_reply(fmt: str) -> None:
    respx.post(CHAT).mock(
        side_effect=[_stream(b""), _completion({"role": "assistant", "content": TEXT_CALLS[fmt]})]
    )
    reply, shown = await _complete(_model()[0], TOOLS)
    assert (reply.content, shown) == ("", [])
    assert [c["function"]["name"] for c in reply.tool_calls] == ["bash"]


@respx.mock
async def test_text_calls_are_left_alone_without_tools() -> None:
    # The wrap-up request offers no tools: whatever the model writes is its answer.
    respx.post(CHAT).mock(return_value=_stream(_sse({"content": TEXT_CALLS["hermes"]})))
    reply, _ = await _complete(_model()[0], None)
    assert reply.content == TEXT_CALLS["hermes"] and reply.tool_calls == []


@respx.mock
async def test_streamed_calls_with_always_zero_index_and_no_ids() -> None:
    deltas = [
        {
            "tool_calls": [
                {"index": 0, "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"name": "bash", "arguments": '{"command":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "pwd"}'}}]},
    ]
    respx.post(CHAT).mock(return_value=_stream(_sse(*deltas, finish="tool_calls")))
    reply, _ = await _complete(_model()[0], TOOLS)
    assert [json.loads(c["function"]["arguments"]) for c in reply.tool_calls] == [
        {"command": "ls"},
        {"command": "pwd"},
    ]
    assert len({c["id"] for c in reply.tool_calls}) == 2 and not reply.calls_from_text


# -- routes: parameters and headers --------------------------------------------------------------
@respx.mock
async def test_openrouter_sends_the_key_and_attribution_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    route = respx.post(CHAT).mock(return_value=_stream(_sse({"content": "ok"})))
    await _complete(_model(_plan("openrouter:qwen/qwen3-coder"))[0])
    request = route.calls[0].request
    assert request.headers["authorization"] == "Bearer sk-or-test"
    assert request.headers["http-referer"] == "https://github.com/nexpy/nexpy"
    assert request.headers["x-title"] == "nexpy"
    assert json.loads(request.content)["model"] == "qwen/qwen3-coder"


@respx.mock
async def test_named_endpoint_sends_its_key_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOX_KEY", "sk-box")
    box = EndpointConfig(url=BASE, api_key_env="BOX_KEY", headers={"X-Team": "nexpy"})
    plan = plan_spawn(
        SpawnRequest("oai-compat:coder", "box"), Config(endpoints={"box": box}), environ={}
    )
    route = respx.post(CHAT).mock(return_value=_stream(_sse({"content": "ok"})))
    await _complete(_model(plan)[0])
    request = route.calls[0].request
    assert request.headers["authorization"] == "Bearer sk-box"
    assert request.headers["x-team"] == "nexpy"


@pytest.mark.parametrize(("window", "expected"), [(16384, 16384), (None, 8192)])
def test_ollama_asks_for_the_window_as_num_ctx(window: int | None, expected: int) -> None:
    plan = _plan("ollama:qwen3:8b", "http://127.0.0.1:11434", context_window=window)
    model = build_model(plan, Emitter())
    assert isinstance(model, LitellmModel)
    kwargs = model.request_kwargs(USER, None, stream=True, max_tokens=None)
    assert kwargs["model"] == "ollama_chat/qwen3:8b"
    assert kwargs["api_base"] == "http://127.0.0.1:11434"
    assert kwargs["num_ctx"] == expected


def test_other_routes_send_no_num_ctx() -> None:
    model = build_model(_plan(), Emitter())
    assert isinstance(model, LitellmModel)
    assert "num_ctx" not in model.request_kwargs(USER, None, stream=True, max_tokens=None)


# -- settings ------------------------------------------------------------------------------------
def test_idle_timeout_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert idle_timeout_from_env() == DEFAULT_IDLE_TIMEOUT
    monkeypatch.setenv("NEX_IDLE_TIMEOUT", "2.5")
    assert idle_timeout_from_env() == 2.5 and LitellmModel(_plan()).idle_timeout == 2.5
    monkeypatch.setenv("NEX_IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="NEX_IDLE_TIMEOUT"):
        idle_timeout_from_env()


# -- a burst of tokens, from a real socket -------------------------------------------------------
async def test_a_burst_of_tokens_arrives_whole_in_few_pieces() -> None:
    from stubs.oai import stub_server

    words = [f"w{i} " for i in range(3000)]
    with stub_server({"default": {"content": "".join(words), "burst": True}}, strict=True) as srv:
        model, _ = _model(_plan(endpoint=srv.url))
        pieces: list[str] = []
        reply = await model.complete([{"role": "user", "content": "go"}], None, pieces.append)
    assert reply.content == "".join(words) == "".join(pieces)
    # One piece per token would be 3,000 trips through litellm; what arrived together is merged.
    assert len(pieces) < len(words) / 10


# -- the server's own output parser fails: raw text (issue 13) -----------------------------------
PARSER_FAILURE = "The model produced output that does not match the expected peg-native format"
RAW_CALL = '<tool_call>\n{"name": "bash", "arguments": {"command": "echo hi"}}\n</tool_call>'


def _sse_error(message: str) -> httpx.Response:
    # llama-server, streamed: a 200 whose first event is the error object
    body = {"error": {"code": 500, "message": message, "type": "server_error"}}
    return _stream(b"data: " + json.dumps(body).encode() + b"\n\n")


@respx.mock
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
async def test_parser_failure_asks_for_raw_text_after_the_retries(streamed: bool) -> None:
    failure = _sse_error(PARSER_FAILURE) if streamed else _error(500, PARSER_FAILURE)
    chat = respx.post(CHAT).mock(return_value=failure)
    rendered = respx.post(BASE.removesuffix("/v1") + "/apply-template").mock(
        return_value=httpx.Response(200, json={"prompt": "<rendered>"})
    )
    completion = {
        "choices": [{"index": 0, "text": RAW_CALL, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    raw = respx.post(CHAT.replace("/chat/completions", "/completions")).mock(
        return_value=httpx.Response(200, json=completion)
    )
    warnings: list[str] = []
    model, sleeps = _model(on_warning=warnings.append)
    reply, _ = await _complete(model, TOOLS)
    assert chat.call_count == 4 and len(sleeps) == 3
    assert [c["function"]["name"] for c in reply.tool_calls] == ["bash"]
    assert reply.calls_from_text and reply.usage == {"prompt_tokens": 9, "completion_tokens": 4}
    (warning,) = warnings
    assert f"could not parse the model's output ({PARSER_FAILURE}) 4 times" in warning
    # The template rendered the tools into the prompt: no tools field, no tool roles.
    sent = json.loads(rendered.calls[0].request.content)
    assert set(sent) == {"messages"} and "bash" in sent["messages"][0]["content"]
    assert json.loads(raw.calls[0].request.content)["prompt"] == "<rendered>"
    # From now on the model is asked for raw text at once: no more doomed chat requests.
    await _complete(model, TOOLS)
    assert chat.call_count == 4 and raw.call_count == 2 and len(warnings) == 1


@respx.mock
async def test_parser_failure_on_a_route_without_raw_text_ends_in_one_line() -> None:
    respx.post("https://openrouter.ai/api/v1/chat/completions").mock(
        return_value=_error(500, PARSER_FAILURE)
    )
    model, _ = _model(_plan("openrouter:m", None), on_warning=lambda _: None)
    with pytest.raises(ProviderError) as info:
        await _complete(model, TOOLS)
    assert "could not parse the model's output" in str(info.value) and not model.raw_text


@respx.mock
async def test_parser_failure_on_a_server_without_raw_text_ends_in_one_line() -> None:
    respx.post(CHAT).mock(return_value=_error(500, PARSER_FAILURE))
    respx.post(BASE.removesuffix("/v1") + "/apply-template").mock(
        return_value=httpx.Response(404, json={"detail": "Not Found"})
    )
    model, _ = _model(on_warning=lambda _: None)
    with pytest.raises(ProviderError) as info:
        await _complete(model, TOOLS)
    assert "cannot give the raw text (no /apply-template" in info.value.line()
    assert not info.value.retryable
