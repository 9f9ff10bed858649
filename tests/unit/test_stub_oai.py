"""The scripted OpenAI chat stub: wire formats, faults, strict mode, window, command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stubs.oai import EXCEED_CONTEXT_MESSAGE, Script, StubServer, stub_server

ROOT = Path(__file__).resolve().parents[2]

USER = [{"role": "user", "content": "hi"}]


def chat(srv: StubServer, messages: Any = None, **body: Any) -> httpx.Response:
    return httpx.post(
        srv.url + "/chat/completions",
        json={"model": "m", "messages": messages if messages is not None else USER, **body},
        timeout=5,
    )


def sse_events(text: str) -> list[Any]:
    """The data payloads of an SSE body, JSON-decoded except ``[DONE]``."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream(srv: StubServer, messages: Any = None, **body: Any) -> list[Any]:
    r = chat(srv, messages, stream=True, **body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r.text)


def assemble(events: list[Any]) -> dict[str, Any]:
    """Fold streamed deltas into one message the way an OpenAI client does."""
    msg: dict[str, Any] = {"content": "", "reasoning": "", "tool_calls": {}}
    finish = None
    for ev in events:
        if ev == "[DONE]":
            continue
        assert ev["object"] == "chat.completion.chunk"
        for choice in ev["choices"]:
            delta = choice["delta"]
            if "role" in delta:
                msg["role"] = delta["role"]
            msg["content"] += delta.get("content") or ""
            msg["reasoning"] += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or ():
                slot = msg["tool_calls"].setdefault(tc["index"], {"arguments": ""})
                if "id" in tc:
                    slot["id"] = tc["id"]
                    slot["type"] = tc["type"]
                fn = tc.get("function") or {}
                if "name" in fn:
                    slot["name"] = fn["name"]
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice["finish_reason"] or finish
    msg["finish_reason"] = finish
    msg["tool_calls"] = [msg["tool_calls"][i] for i in sorted(msg["tool_calls"])]
    return msg


# ---------------------------------------------------------------------------------------------
# Plain and streamed answers.


def test_plain_completion_shape_and_recording() -> None:
    with stub_server({"model": "tiny", "replies": [{"content": "Hello there"}]}) as srv:
        r = chat(srv, temperature=0)
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-")
        assert isinstance(body["created"], int)
        assert body["model"] == "tiny"
        (choice,) = body["choices"]
        assert choice == {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "finish_reason": "stop",
        }
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert srv.requests == [{"model": "m", "messages": USER, "temperature": 0}]
        assert srv.rejections == []


def test_echo_proves_which_user_text_arrived() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}],
        },
    ]
    with stub_server({"replies": [{"echo": True}]}) as srv:
        assert chat(srv, msgs).json()["choices"][0]["message"]["content"] == "echo: second"
        # the default once replies run out is echo too
        assert chat(srv).json()["choices"][0]["message"]["content"] == "echo: hi"


def test_replies_in_order_then_default_across_stream_and_plain() -> None:
    script = {"replies": [{"content": "one"}, {"content": "two"}], "default": {"content": "dflt"}}
    with stub_server(script) as srv:
        assert chat(srv).json()["choices"][0]["message"]["content"] == "one"
        assert assemble(stream(srv))["content"] == "two"
        assert chat(srv).json()["choices"][0]["message"]["content"] == "dflt"
        assert assemble(stream(srv))["content"] == "dflt"
        assert srv.script.consumed == 2
        assert len(srv.requests) == 4


def test_script_as_a_list_and_added_replies() -> None:
    with stub_server([{"content": "a"}]) as srv:
        srv.script.add({"content": "b"})
        assert chat(srv).json()["choices"][0]["message"]["content"] == "a"
        assert chat(srv).json()["choices"][0]["message"]["content"] == "b"
        assert srv.script.remaining == 0


def test_path_without_v1_is_served() -> None:
    with stub_server([{"content": "x"}]) as srv:
        r = httpx.post(srv.base_url + "/chat/completions", json={"messages": USER})
        assert r.json()["choices"][0]["message"]["content"] == "x"


def test_stream_shape_words_and_done() -> None:
    with stub_server([{"content": "Hello there, general Kenobi"}]) as srv:
        events = stream(srv)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert pieces == ["Hello", " there,", " general", " Kenobi"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)


def test_stream_chunk_size_and_usage_chunk() -> None:
    with stub_server(
        [{"content": "abcdefg", "chunk_size": 3, "usage": {"prompt_tokens": 7}}]
    ) as srv:
        events = stream(srv, stream_options={"include_usage": True})
    pieces = [e["choices"][0]["delta"].get("content") for e in events[1:4]]
    assert pieces == ["abc", "def", "g"]
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 7
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


def test_chunk_delay_paces_the_stream() -> None:
    with stub_server([{"content": "a b c d", "chunk_delay": 0.05}]) as srv:
        t0 = time.perf_counter()
        with httpx.stream(
            "POST", srv.url + "/chat/completions", json={"messages": USER, "stream": True}
        ) as r:
            arrivals = [time.perf_counter() - t0 for line in r.iter_lines() if line]
    # role, 4 words, finish, [DONE]: 7 events, 6 gaps of 50 ms
    assert len(arrivals) == 7
    assert arrivals[-1] - arrivals[0] >= 0.25


def test_delay_before_headers() -> None:
    with stub_server([{"content": "late", "delay": 0.2}]) as srv:
        t0 = time.perf_counter()
        assert chat(srv).status_code == 200
        assert time.perf_counter() - t0 >= 0.2


def test_reasoning_plain_and_streamed() -> None:
    replies = [{"reasoning": "think hard", "content": "42"}] * 2
    with stub_server(replies) as srv:
        msg = chat(srv).json()["choices"][0]["message"]
        assert msg["reasoning_content"] == "think hard"
        assert msg["content"] == "42"
        got = assemble(stream(srv))
        assert (got["reasoning"], got["content"]) == ("think hard", "42")


# ---------------------------------------------------------------------------------------------
# Tool calls.

TOOL_REPLY = {
    "tool_calls": [
        {"name": "bash", "arguments": {"command": "echo hi"}},
        {"name": "read_file", "arguments": '{"path": "a.txt"}', "id": "call_custom"},
    ]
}


def test_tool_calls_plain() -> None:
    with stub_server([TOOL_REPLY, TOOL_REPLY]) as srv:
        (choice,) = chat(srv).json()["choices"]
        assert choice["finish_reason"] == "tool_calls"
        msg = choice["message"]
        assert msg["content"] is None
        calls = msg["tool_calls"]
        assert [c["id"] for c in calls] == ["call_1", "call_custom"]
        assert all(c["type"] == "function" for c in calls)
        assert calls[0]["function"]["name"] == "bash"
        assert json.loads(calls[0]["function"]["arguments"]) == {"command": "echo hi"}
        assert calls[1]["function"]["arguments"] == '{"path": "a.txt"}'
        # ids keep counting across requests, so a history never holds two call_1s
        again = chat(srv).json()["choices"][0]["message"]["tool_calls"]
        assert again[0]["id"] == "call_2"


def test_tool_calls_streamed_assemble() -> None:
    with stub_server([{**TOOL_REPLY, "content": "let me look"}]) as srv:
        events = stream(srv)
    # the first delta of each call carries index, id, type and name; arguments come in pieces
    heads = [
        e["choices"][0]["delta"]["tool_calls"][0]
        for e in events[:-1]
        if "id" in (e["choices"][0]["delta"].get("tool_calls") or [{}])[0]
    ]
    assert [h["index"] for h in heads] == [0, 1]
    assert heads[0]["function"] == {"name": "bash", "arguments": ""}
    arg_pieces = [
        e
        for e in events[:-1]
        if (e["choices"][0]["delta"].get("tool_calls") or [{}])[0].get("index") == 0
        and "id" not in e["choices"][0]["delta"]["tool_calls"][0]
    ]
    assert len(arg_pieces) >= 2
    got = assemble(events)
    assert got["content"] == "let me look"
    assert got["finish_reason"] == "tool_calls"
    assert [(c["id"], c["name"]) for c in got["tool_calls"]] == [
        ("call_1", "bash"),
        ("call_custom", "read_file"),
    ]
    assert json.loads(got["tool_calls"][0]["arguments"]) == {"command": "echo hi"}
    assert json.loads(got["tool_calls"][1]["arguments"]) == {"path": "a.txt"}


# ---------------------------------------------------------------------------------------------
# Models, props, health, the recording endpoints.


def test_models_props_health_without_window() -> None:
    with stub_server({"model": "qwen-stub"}) as srv:
        models = httpx.get(srv.url + "/models").json()
        assert models["object"] == "list"
        (entry,) = models["data"]
        assert entry["id"] == "qwen-stub"
        assert entry["object"] == "model"
        assert entry["owned_by"] == "stub"
        assert "meta" not in entry
        assert httpx.get(srv.base_url + "/props").status_code == 404
        assert httpx.get(srv.base_url + "/health").json() == {"status": "ok"}


def test_models_props_with_window_changed_at_runtime() -> None:
    with stub_server(None, window=4096) as srv:
        assert httpx.get(srv.url + "/models").json()["data"][0]["meta"]["n_ctx"] == 4096
        props = httpx.get(srv.base_url + "/props").json()
        assert props["default_generation_settings"]["n_ctx"] == 4096
        assert isinstance(props["chat_template"], str) and props["chat_template"]
        srv.window = 512
        props = httpx.get(srv.base_url + "/props").json()
        assert props["default_generation_settings"]["n_ctx"] == 512
        srv.window = None
        assert httpx.get(srv.base_url + "/props").status_code == 404


def test_stub_requests_endpoint_and_record_file(tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    with stub_server(None, record=rec) as srv:
        chat(srv, [{"role": "user", "content": "one"}])
        chat(srv, [{"role": "user", "content": "two"}], stream=True)
        listed = httpx.get(srv.base_url + "/_stub/requests").json()
        assert [r["messages"][0]["content"] for r in listed] == ["one", "two"]
        lines = rec.read_text().splitlines()  # flushed per line, readable while serving
        assert [json.loads(x)["messages"][0]["content"] for x in lines] == ["one", "two"]


def test_invalid_json_body_is_400_and_recorded() -> None:
    with stub_server(None) as srv:
        r = httpx.post(
            srv.url + "/chat/completions",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == 400
        assert srv.requests == [{"_invalid_json": "{nope"}]


# ---------------------------------------------------------------------------------------------
# Faults.


def test_fault_status_with_retry_after_then_next_reply() -> None:
    script = [{"fault": "status", "status": 429, "retry_after": 1}, {"content": "fine"}]
    with stub_server(script) as srv:
        r = chat(srv)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        err = r.json()["error"]
        assert err["code"] == 429
        assert err["type"] == "rate_limit_error"
        assert chat(srv).json()["choices"][0]["message"]["content"] == "fine"


def test_fault_status_custom_body_when_streaming() -> None:
    body = {"error": {"message": "model overloaded", "type": "overloaded"}}
    with stub_server([{"fault": "status", "status": 503, "body": body}]) as srv:
        r = chat(srv, stream=True)
        assert r.status_code == 503
        assert r.json() == body
        assert "retry-after" not in r.headers


def test_fault_hang_until_client_gives_up_and_server_still_serves() -> None:
    with stub_server([{"fault": "hang"}, {"content": "after"}]) as srv:
        t0 = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/chat/completions", json={"messages": USER}, timeout=0.3)
        assert time.perf_counter() - t0 < 2
        assert chat(srv).json()["choices"][0]["message"]["content"] == "after"


def test_fault_hang_after_chunks_streamed() -> None:
    with stub_server([{"fault": "hang", "after_chunks": 2, "content": "a b c"}]) as srv:
        got: list[str] = []
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream(
                "POST",
                srv.url + "/chat/completions",
                json={"messages": USER, "stream": True},
                timeout=0.3,
            ) as r,
        ):
            got.extend(line for line in r.iter_lines() if line)
        assert len(got) == 2


def test_server_stop_cuts_a_hanging_request() -> None:
    srv = StubServer([{"fault": "hang"}]).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(srv.url + "/chat/completions", json={"messages": USER}, timeout=5)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.time() + 2
    while not srv.requests and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    srv.stop()
    t.join(3)
    assert not t.is_alive()
    assert time.perf_counter() - t0 < 2.5
    assert errors and isinstance(errors[0], httpx.TransportError)


def test_fault_drop_streamed_after_chunks() -> None:
    script = [{"fault": "drop", "after_chunks": 2, "content": "partial answer text"}]
    with stub_server(script) as srv:
        got: list[str] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(
                "POST", srv.url + "/chat/completions", json={"messages": USER, "stream": True}
            ) as r,
        ):
            got.extend(line for line in r.iter_lines() if line)
        assert len(got) == 2
        assert json.loads(got[1][len("data: ") :])["choices"][0]["delta"]["content"] == "partial"


def test_fault_drop_plain_truncates_body() -> None:
    with (
        stub_server([{"fault": "drop", "content": "x" * 100}]) as srv,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        chat(srv)


def test_fault_malformed() -> None:
    with stub_server([{"fault": "malformed"}, {"fault": "malformed"}]) as srv:
        r = chat(srv, stream=True)
        assert r.status_code == 200
        assert "data: {not json" in r.text
        assert "[DONE]" not in r.text
        r = chat(srv)
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()


def test_fault_empty() -> None:
    with stub_server([{"fault": "empty"}, {"fault": "empty"}]) as srv:
        r = chat(srv, stream=True)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.content == b""
        r = chat(srv)
        assert r.status_code == 200
        assert r.content == b""


def test_fault_html() -> None:
    with stub_server(
        [{"fault": "html"}, {"fault": "html", "status": 504, "body": "<p>gw</p>"}]
    ) as srv:
        r = chat(srv)
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("text/html")
        assert "<html>" in r.text and "502 Bad Gateway" in r.text
        r = chat(srv, stream=True)
        assert (r.status_code, r.text) == (504, "<p>gw</p>")


def test_fault_stream_error() -> None:
    with stub_server(
        [{"fault": "stream_error", "after_chunks": 1}, {"fault": "stream_error"}]
    ) as srv:
        events = stream(srv)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert events[-1]["error"]["code"] == 500
        assert chat(srv).status_code == 500


def test_close_framing_has_neither_chunking_nor_length() -> None:
    with stub_server([{"content": "alpha beta"}, {"content": "plain"}], framing="close") as srv:
        r = chat(srv, stream=True)
        assert r.headers["connection"] == "close"
        assert "transfer-encoding" not in r.headers and "content-length" not in r.headers
        assert r.text.endswith("data: [DONE]\n\n")
        r = chat(srv)
        assert r.headers["connection"] == "close" and "content-length" not in r.headers
        assert r.json()["choices"][0]["message"]["content"] == "plain"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "plain"])
def test_clean_cut_is_an_error_only_when_chunked(streamed: bool) -> None:
    """The point of the close framing: a FIN mid-answer reads as a finished body to HTTP, so
    only the client's own reading of the answer can tell it was cut."""
    reply = {"fault": "cut", "after_chunks": 2, "content": "partial answer text"}
    with stub_server([reply]) as srv, pytest.raises(httpx.RemoteProtocolError):
        chat(srv, stream=streamed)
    with stub_server([reply], framing="close") as srv:
        r = chat(srv, stream=streamed)
    assert r.status_code == 200
    if streamed:
        assert [e["choices"][0]["delta"] for e in sse_events(r.text)][1] == {"content": "partial"}
        assert "[DONE]" not in r.text
    else:
        with pytest.raises(ValueError):
            r.json()


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_fault_unfinished_lacks_only_the_finish(framing: str) -> None:
    reply = {"fault": "unfinished", "content": "all of it"}
    with stub_server([reply, reply], framing=framing) as srv:
        events = sse_events(chat(srv, stream=True).text)
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "all of it"
        assert all(e["choices"][0]["finish_reason"] is None for e in events)
        assert "[DONE]" not in events
        choice = chat(srv).json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == ("all of it", None)


def test_fault_repeat_sends_the_same_chunk_until_the_client_leaves() -> None:
    with (
        stub_server([{"fault": "repeat", "content": "again and again"}]) as srv,
        httpx.stream(
            "POST", srv.url + "/chat/completions", json={"messages": USER, "stream": True}
        ) as r,
    ):
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(200)]
    contents = {json.loads(x[6:])["choices"][0]["delta"].get("content") for x in seen if x}
    assert contents == {"", "again"}  # the role chunk, then "again" forever


def test_fault_event_error() -> None:
    with stub_server([{"fault": "event_error", "after_chunks": 1}]) as srv:
        text = chat(srv, stream=True).text
    assert "\n\nevent: error\ndata: {" in text and "[DONE]" not in text


# ---------------------------------------------------------------------------------------------
# Strict mode and the context window.


def test_strict_rejection_body_and_reply_not_consumed() -> None:
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with stub_server([{"content": "kept"}], strict=True) as srv:
        for kw in ({}, {"stream": True}):
            r = chat(srv, bad, **kw)
            assert r.status_code == 400
            err = r.json()["error"]
            assert err["code"] == 400
            assert err["type"] == "invalid_request_error"
            assert "two consecutive user messages" in err["message"]
        assert [i for i, _ in srv.rejections] == [0, 1]
        assert len(srv.requests) == 2
        assert chat(srv).json()["choices"][0]["message"]["content"] == "kept"
        rejs = httpx.get(srv.base_url + "/_stub/rejections").json()
        assert rejs[0][0] == 0 and "consecutive" in rejs[0][1]


def test_non_strict_accepts_the_same() -> None:
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with stub_server(None) as srv:
        assert chat(srv, bad).status_code == 200


def test_window_overflow_body_and_runtime_change() -> None:
    big = [{"role": "user", "content": "word " * 400}]
    with stub_server([{"content": "fits"}], window=50) as srv:
        r = chat(srv, big)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == 400
        assert err["type"] == "exceed_context_size_error"
        assert err["message"] == EXCEED_CONTEXT_MESSAGE
        assert err["n_ctx"] == 50
        assert err["n_prompt_tokens"] > 50
        assert srv.overflows == [(0, err["n_prompt_tokens"])]
        assert chat(srv, big, stream=True).status_code == 400
        srv.window = 100_000
        assert chat(srv, big).json()["choices"][0]["message"]["content"] == "fits"


# ---------------------------------------------------------------------------------------------
# Speed, script checks, the command line.


def test_keep_alive_requests_are_fast() -> None:
    # Without TCP_NODELAY each request on a kept-alive connection waits ~44 ms.
    with stub_server(None) as srv, httpx.Client(base_url=srv.url) as client:
        client.post("/chat/completions", json={"messages": USER})
        t0 = time.perf_counter()
        for _ in range(20):
            assert client.post("/chat/completions", json={"messages": USER}).status_code == 200
        assert (time.perf_counter() - t0) / 20 < 0.02


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"replies": [{"contnet": "x"}]}, "unknown reply key"),
        ({"replies": [{"fault": "explode"}]}, "unknown fault"),
        ({"replies": [{"tool_calls": []}]}, "non-empty list"),
        ({"replies": [{"tool_calls": [{"arguments": {}}]}]}, "needs a string 'name'"),
        ({"reply": []}, "unknown script key"),
        ("text", "must be an object"),
    ],
)
def test_script_typos_fail_loudly(obj: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Script.from_obj(obj)


def test_command_line_prints_url_and_serves(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"replies": [{"content": "from file"}]}))
    rec = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stubs.oai",
            "--port",
            "0",
            "--script",
            str(script),
            "--strict",
            "--window",
            "1000",
            "--record",
            str(rec),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("http://127.0.0.1:") and line.endswith("/v1\n")
        url = line.strip()
        r = httpx.post(url + "/chat/completions", json={"messages": USER}, timeout=5)
        assert r.json()["choices"][0]["message"]["content"] == "from file"
        r = httpx.post(url + "/chat/completions", json={"messages": USER * 2}, timeout=5)
        assert r.status_code == 400  # --strict
        assert httpx.get(url + "/models").json()["data"][0]["meta"]["n_ctx"] == 1000
        assert len(httpx.get(url[: -len("/v1")] + "/_stub/requests").json()) == 2
        assert len(rec.read_text().splitlines()) == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert out == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_when_asked_answers_a_request_by_its_text_and_consumes_nothing() -> None:
    import httpx

    from stubs.oai import stub_server

    script = {"replies": [{"content": "first"}], "when_asked": {"Summarize": {"content": "sum"}}}
    with stub_server(script) as srv:

        def ask(text: str) -> str:
            body = {"model": "m", "messages": [{"role": "user", "content": text}]}
            reply = httpx.post(srv.url + "/chat/completions", json=body).json()
            return str(reply["choices"][0]["message"]["content"])

        assert [ask("Summarize this"), ask("go"), ask("Please Summarize")] == [
            "sum",
            "first",
            "sum",
        ]


def test_echo_stops_at_max_tokens_like_a_server() -> None:
    long = "word " * 2000
    with stub_server({"default": {"echo": True}}) as srv:
        whole = chat(srv, [{"role": "user", "content": long}]).json()["choices"][0]
        cut = chat(srv, [{"role": "user", "content": long}], max_tokens=100).json()["choices"][0]
    assert whole["finish_reason"] == "stop" and whole["message"]["content"] == "echo: " + long
    assert cut["finish_reason"] == "length"
    assert 300 < len(cut["message"]["content"]) < 600  # about 100 tokens of "word "
    assert long.startswith(cut["message"]["content"].removeprefix("echo: "))
