"""The fault matrix (issue 4): `nex` as a subprocess against a stub that misbehaves on purpose.

Every row ends either retried-and-successful (exit 0, the answer once on stdout, a warning on
stderr) or in exactly one error line and exit 1; in both cases the journal stays valid and holds
the answer at most once. Autonomous mode never streams to stdout, so "shown twice" can only
happen in the REPL: the mid-stream rows have REPL variants at the end, under tmux. The other
rows behave the same in the REPL (the error goes through the same classification and appears as
one `error:` line, and the REPL goes on), so one REPL error row stands for them.
"""

from __future__ import annotations

import json
import shutil
import socket
from typing import Any

import pytest

from stubs.oai import stub_server
from stubs.server import FRAMINGS
from tests.conftest import NexEnv, Result
from tests.integration.test_repl_tmux import repl  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(120)

ANSWER = "The build passes and all four tests are green."
IDLE = "2"  # NEX_IDLE_TIMEOUT for the stall rows: a hang costs 2 s, not 10 minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(nex_env: NexEnv, url: str, *extra: str) -> Result:
    nex_env.env["NEX_IDLE_TIMEOUT"] = IDLE
    # A given window skips window discovery: these tests are about the chat request.
    return nex_env.run(
        "-m", "local:stub-model", "-e", url, "--context-window", "32768", "--chat", "f", *extra,
        "--autonomous", "status?",
    )  # fmt: skip


def _journal(nex_env: NexEnv) -> list[dict[str, Any]]:
    """The session's messages, after checking every line parses and the run is bracketed."""
    path = nex_env.home / "sessions" / "f" / "journal.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert entries[0]["kind"] == "init" and entries[-1]["kind"] == "end"
    return [e["message"] for e in entries if e["kind"] == "message"]


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def _recovered(nex_env: NexEnv, result: Result, warning: str, *, retries: int | None = 1) -> None:
    """Exit 0, the answer once on stdout, `retries` retry warnings (any number if None), the
    last one naming the fault, a clean journal."""
    _no_traceback(result)
    assert result.code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    lines = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert lines and all(line.startswith("warning:") for line in lines), result.stderr
    assert retries is None or len(lines) == retries, lines
    assert warning in lines[-1], lines
    assert result.error_lines() == []
    messages = _journal(nex_env)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == ANSWER


def _failed(nex_env: NexEnv, result: Result, needle: str) -> str:
    """Exit 1 with exactly one error line containing `needle`; nothing on stdout."""
    _no_traceback(result)
    assert result.code == 1, result.stderr
    errors = result.error_lines()
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert result.stdout == ""
    assert [m["role"] for m in _journal(nex_env)] == ["user"]
    return errors[0]


def _then_answer(fault: dict[str, Any]) -> dict[str, Any]:
    return {"replies": [fault], "default": {"content": ANSWER}}


# -- the network ---------------------------------------------------------------------------------
def test_connection_refused_is_retried_then_one_line(nex_env: NexEnv) -> None:
    result = _run(nex_env, f"http://127.0.0.1:{_free_port()}")
    line = _failed(nex_env, result, "connection refused by http://127.0.0.1:")
    assert "(after 4 attempts)" in line and "nex doctor" in line


def test_unknown_host_is_one_line_without_retries(nex_env: NexEnv) -> None:
    result = _run(nex_env, "http://no-such-host.invalid:8080")
    line = _failed(nex_env, result, "cannot resolve the host of http://no-such-host.invalid:8080")
    # No retries: neither a retry warning nor an attempt count (a timing bound here would
    # measure the machine's load, not nex).
    assert "attempts" not in line and "retrying" not in result.stderr


def test_tls_to_a_plain_http_port(nex_env: NexEnv) -> None:
    with stub_server(_then_answer({"content": ANSWER})) as srv:
        result = _run(nex_env, f"https://127.0.0.1:{srv.port}")
        line = _failed(
            nex_env, result, f"TLS handshake with https://127.0.0.1:{srv.port}/v1 failed"
        )
        assert "use an http:// URL" in line
        assert srv.requests == []


# -- HTTP statuses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "warning"),
    [
        ({"fault": "status", "status": 500}, "HTTP 500 from"),
        (
            {"fault": "status", "status": 500, "body": "Internal Server Error"},
            "Internal Server Error",
        ),
        ({"fault": "status", "status": 502}, "HTTP 502 from"),
        ({"fault": "status", "status": 503}, "HTTP 503 from"),
        ({"fault": "html", "status": 502}, "an HTML page ('502 Bad Gateway'), likely from a proxy"),
    ],
    ids=["500", "500-text-body", "502", "503", "html-502"],
)
def test_server_errors_are_retried_and_succeed(
    nex_env: NexEnv, fault: dict[str, Any], warning: str
) -> None:
    with stub_server(_then_answer(fault), strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), warning)
        assert len(srv.requests) == 2


def test_html_error_page_every_time_ends_in_one_readable_line(nex_env: NexEnv) -> None:
    with stub_server({"default": {"fault": "html", "status": 502}}) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), "HTTP 502 from")
        assert "an HTML page ('502 Bad Gateway')" in line and "(after 4 attempts)" in line
        assert "<html" not in line
        assert len(srv.requests) == 4


def test_429_waits_for_retry_after(nex_env: NexEnv) -> None:
    fault = {"fault": "status", "status": 429, "retry_after": 1}
    with stub_server(_then_answer(fault), strict=True) as srv:
        result = _run(nex_env, srv.url)
        _recovered(nex_env, result, "HTTP 429 from")
        assert "retrying in 1.0 s" in result.stderr
        first, second = srv.arrivals
        assert second - first >= 0.95


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_one_line_and_not_retried(nex_env: NexEnv, status: int) -> None:
    with stub_server(_then_answer({"fault": "status", "status": status})) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), f"HTTP {status} from {srv.url}")
        assert "refused the credentials" in line
        assert len(srv.requests) == 1


def test_model_not_found_is_one_line_and_not_retried(nex_env: NexEnv) -> None:
    body = {"error": {"code": 404, "message": "model 'stub-model' not found", "type": "not_found"}}
    with stub_server(_then_answer({"fault": "status", "status": 404, "body": body})) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), "model 'stub-model' not found")
        assert "nex doctor" in line
        assert len(srv.requests) == 1


# -- stalls and cuts -----------------------------------------------------------------------------
def test_hang_before_headers_times_out_and_retries(nex_env: NexEnv) -> None:
    with stub_server(_then_answer({"fault": "hang"}), strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), f"{srv.url} sent no reply for 2 s")


def test_hang_mid_stream_times_out_and_retries(nex_env: NexEnv) -> None:
    fault = {"fault": "hang", "content": ANSWER, "after_chunks": 4}
    with stub_server(_then_answer(fault), strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), f"{srv.url} stopped sending mid-answer for 2 s")


def test_reset_mid_stream_is_retried(nex_env: NexEnv) -> None:
    fault = {"fault": "drop", "content": ANSWER, "after_chunks": 4}
    with stub_server(_then_answer(fault), strict=True) as srv:
        _recovered(
            nex_env, _run(nex_env, srv.url), f"the connection to {srv.url} was cut mid-answer"
        )


# Every way an answer can stop short, in both framings of a body (DESIGN §9): a reset (RST), a
# clean close (FIN) mid-answer, and a body that ends properly without the answer's finish. In the
# `close` framing a FIN looks like a finished body to HTTP; only the answer's own end can tell.
# Unstreamed: an empty stream first makes nex ask again without streaming (as it does for
# llama-cpp-python's silent template errors), so the fault meets the unstreamed request.
CUTS = {
    "reset": {"fault": "drop", "after_chunks": 4},
    "fin": {"fault": "cut", "after_chunks": 4},
    "unfinished": {"fault": "unfinished"},
}


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
@pytest.mark.parametrize("cut", list(CUTS))
def test_a_cut_answer_is_retried_never_taken(
    nex_env: NexEnv, cut: str, streamed: bool, framing: str
) -> None:
    fault = {**CUTS[cut], "content": ANSWER}
    replies = [fault] if streamed else [{"fault": "empty"}, fault]
    script = {"replies": replies, "default": {"content": ANSWER}}
    with stub_server(script, strict=True, framing=framing) as srv:
        result = _run(nex_env, srv.url)
        if streamed:
            _recovered(nex_env, result, f"the connection to {srv.url} was cut mid-answer")
        else:
            # A reset or an incomplete body under Content-Length may be re-sent once by
            # litellm's HTTP handler before nex sees it; what counts is that it was not taken.
            _recovered(nex_env, result, "", retries=None)
        assert len(srv.requests) == len(replies) + 1
        assert [bool(r.get("stream")) for r in srv.requests][-2:] == [streamed, streamed]


def test_a_cut_every_time_ends_in_one_line(nex_env: NexEnv) -> None:
    with stub_server({"default": {**CUTS["fin"], "content": ANSWER}}, framing="close") as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), f"the connection to {srv.url} was cut")
        assert "(after 4 attempts)" in line


# A server restarted between two turns (or a proxy whose backend did): the connection kept in
# the pool from the first turn is dead, and the request sent on it gets no response at all. It is
# sent again at once on a new connection, as browsers do: no warning, not a failed attempt.
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
def test_a_dead_pooled_connection_is_retried_once_without_counting(
    nex_env: NexEnv, streamed: bool, reset: bool
) -> None:
    call = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo turn-one"}}]}
    dead = {"fault": "restarted", "reset": reset}
    replies = [call, *_unstreamed([dead], streamed)]
    with stub_server({"replies": replies, "default": {"content": ANSWER}}, strict=True) as srv:
        result = _run(nex_env, srv.url)
        records = [r for r in srv.records if r["path"].endswith("/chat/completions")]
    _no_traceback(result)
    assert result.code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    # The only retry warning is the empty stream's, which took the unstreamed row unstreamed.
    retries = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert retries == ([] if streamed else retries[:1]), result.stderr
    assert all("empty reply" in line for line in retries) and result.error_lines() == []
    assert len(records) == len(replies) + 1
    before, died, again = records[-3:]
    assert died["port"] == before["port"]  # the request went out on the kept-alive connection
    assert again["port"] != died["port"]  # and again on a new one
    assert [bool(r["body"].get("stream")) for r in (died, again)] == [streamed, streamed]
    roles = [m["role"] for m in _journal(nex_env)]
    assert roles == ["user", "assistant", "tool", "assistant"]


def test_a_server_that_never_answers_a_connection_is_retried_counted(nex_env: NexEnv) -> None:
    # The free resend is once per request: a server that drops every connection unanswered
    # ends in one line after nex's 4 attempts. Each attempt is sent twice by nex's transport,
    # and litellm's handler sends a failed one once more on a client of its own (measured: 16).
    with stub_server({"default": {"fault": "restarted"}}) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), f"the connection to {srv.url} was cut")
        assert "(after 4 attempts)" in line
        assert 8 <= len(srv.requests) <= 16


# What llama.cpp, vLLM and proxies send instead of an answer: an error object in a 200 (whole,
# or mid-stream), an SSE `event: error`, and a stream stuck repeating one chunk.
CRASHED = {"error": {"message": "model crashed", "code": 500, "type": "server_error"}}


@pytest.mark.parametrize(
    ("faults", "warning"),
    [
        ([{"fault": "status", "status": 200, "body": CRASHED}], "model crashed"),
        (
            [{"fault": "empty"}, {"fault": "status", "status": 200, "body": CRASHED}],
            "HTTP 500 from",
        ),
        (
            [{"fault": "stream_error", "after_chunks": 3, "body": CRASHED}],
            "reported an error mid-answer: model crashed",
        ),
        (
            [{"fault": "event_error", "after_chunks": 3, "body": CRASHED}],
            "reported an error mid-answer: model crashed",
        ),
        ([{"fault": "repeat", "chunk_delay": 0.001}], "repeating the same chunk"),
    ],
    ids=["200-error-body", "200-error-body-unstreamed", "error-mid-stream", "sse-event-error",
         "repeats-forever"],
)  # fmt: skip
def test_an_error_instead_of_an_answer_is_retried(
    nex_env: NexEnv, faults: list[dict[str, Any]], warning: str
) -> None:
    replies = [{**f, "content": ANSWER} for f in faults]
    with stub_server({"replies": replies, "default": {"content": ANSWER}}, strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), warning, retries=len(replies))
        assert len(srv.requests) == len(replies) + 1


def test_hang_every_time_ends_in_one_line(nex_env: NexEnv) -> None:
    with stub_server({"default": {"fault": "hang"}}) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), "sent no reply for 2 s")
        assert "NEX_IDLE_TIMEOUT" in line and "(after 4 attempts)" in line


# -- broken bodies -------------------------------------------------------------------------------
def test_empty_200_stream_is_retried_without_streaming(nex_env: NexEnv) -> None:
    with stub_server(_then_answer({"fault": "empty"}), strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), "empty reply from")
        assert [bool(r.get("stream")) for r in srv.requests] == [True, False]


def test_malformed_sse_chunk_is_retried(nex_env: NexEnv) -> None:
    fault = {"fault": "malformed", "content": ANSWER, "after_chunks": 3}
    with stub_server(_then_answer(fault), strict=True) as srv:
        _recovered(nex_env, _run(nex_env, srv.url), f"{srv.url} sent a malformed stream chunk")


def test_non_json_200_body_is_one_line(nex_env: NexEnv) -> None:
    fault = {"fault": "status", "status": 200, "body": "this is not json"}
    with stub_server(_then_answer(fault)) as srv:
        line = _failed(nex_env, _run(nex_env, srv.url), "not a chat completion stream")
        assert "application/json" in line
        assert len(srv.requests) == 1


def test_five_megabyte_answer(nex_env: NexEnv) -> None:
    big = ("0123456789abcdef" * 4096 + "\n") * 80  # 5.2 MB
    with stub_server({"replies": [{"content": big, "chunk_size": 65536}]}, strict=True) as srv:
        result = _run(nex_env, srv.url)
    _no_traceback(result)
    assert result.code == 0, result.stderr
    assert result.stdout == big
    messages = _journal(nex_env)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == big


# -- imperfect tool calls: each one answered, none raised out of the loop --------------------------
def _tool_results(srv_requests: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in srv_requests[-1]["messages"] if m["role"] == "tool"]


def test_unknown_tool_is_answered_with_the_real_tools(nex_env: NexEnv) -> None:
    call = {"tool_calls": [{"name": "rm_rf", "arguments": {"path": "/"}}]}
    with stub_server({"replies": [call], "default": {"content": ANSWER}}, strict=True) as srv:
        _ok(nex_env, _run(nex_env, srv.url))
        (result,) = _tool_results(srv.requests)
    assert "unknown tool 'rm_rf'" in result
    assert all(name in result for name in ("bash", "read_file", "write_file"))


@pytest.mark.parametrize(
    ("arguments", "outcome"),
    [
        ('```json\n{"command": "echo fenced"}\n```', "fenced"),
        ('{"command": "echo truncated"', "truncated"),
        ("{command: echo}", "arguments are not valid JSON"),
    ],
    ids=["code-fence", "truncated-closing", "unrepairable"],
)
def test_bad_argument_json_is_repaired_or_returned(
    nex_env: NexEnv, arguments: str, outcome: str
) -> None:
    call = {"tool_calls": [{"name": "bash", "arguments": arguments}]}
    with stub_server({"replies": [call], "default": {"content": ANSWER}}, strict=True) as srv:
        _ok(nex_env, _run(nex_env, srv.url))
        (result,) = _tool_results(srv.requests)
        assert srv.rejections == []
    assert outcome in result


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\n<function=bash>\n<parameter=command>\necho from-text\n</parameter>\n"
        "</function>\n</tool_call>",
        '<tool_call>\n{"name": "bash", "arguments": {"command": "echo from-text"}}\n</tool_call>',
        '```json\n{"name": "bash", "arguments": {"command": "echo from-text"}}\n```',
    ],
    ids=["qwen3-coder-xml", "hermes", "fenced-json"],
)
def test_calls_written_as_text_are_run(nex_env: NexEnv, text: str) -> None:
    replies = [{"content": "Let me check.\n" + text, "chunk_size": 7}]
    with stub_server({"replies": replies, "default": {"content": ANSWER}}, strict=True) as srv:
        _ok(nex_env, _run(nex_env, srv.url))
        (result,) = _tool_results(srv.requests)
        assert srv.rejections == []
        sent_back = next(m for m in srv.requests[1]["messages"] if m["role"] == "assistant")
    assert "from-text" in result
    # The call went back as a call, and its text is gone from the assistant's words.
    assert sent_back["content"] == "Let me check."
    assert sent_back["tool_calls"][0]["function"]["name"] == "bash"


def _unstreamed(replies: list[dict[str, Any]], streamed: bool) -> list[dict[str, Any]]:
    """`replies`, reached unstreamed if not `streamed`: an empty stream first makes nex ask
    again without streaming."""
    return replies if streamed else [{"fault": "empty"}, *replies]


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
def test_a_call_cut_at_the_output_limit_is_answered_not_run(
    nex_env: NexEnv, streamed: bool
) -> None:
    """finish_reason "length" is not a cut stream: the server ended the answer at max_tokens,
    inside the call's arguments. The call is answered with a tool error, never repaired and run."""
    call = {"name": "bash", "arguments": '{"command": "echo ran > ran.txt; echo tru'}
    cut = {"tool_calls": [call], "finish_reason": "length"}
    script = {"replies": _unstreamed([cut], streamed), "default": {"content": ANSWER}}
    with stub_server(script, strict=True) as srv:
        _ok(nex_env, _run(nex_env, srv.url))
        (result,) = _tool_results(srv.requests)
        assert [bool(r.get("stream")) for r in srv.requests][-2] is streamed
    assert "arguments were truncated" in result and "output limit" in result
    assert not (nex_env.work / "ran.txt").exists()


PARTIAL = "Step one: read the config. Step two: run the"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "unstreamed"])
def test_an_answer_cut_at_the_output_limit_is_not_a_finished_task(
    nex_env: NexEnv, streamed: bool
) -> None:
    """A final answer that stopped at max_tokens: on stdout as it is, one warning line, exit 3
    (a limit), journaled as a limit; the next turn tells the model, appended to the new user
    message, with every earlier message sent exactly as before."""
    cut = {"content": PARTIAL, "finish_reason": "length"}
    script = {"replies": _unstreamed([cut], streamed), "default": {"content": ANSWER}}
    with stub_server(script, strict=True) as srv:
        result = _run(nex_env, srv.url)
        _no_traceback(result)
        assert result.code == 3, result.stderr
        assert result.stdout == PARTIAL + "\n"
        warnings = [line for line in result.stderr.splitlines() if "output limit" in line]
        assert len(warnings) == 1 and warnings[0].startswith("warning:"), result.stderr
        assert "incomplete" in warnings[0] and result.error_lines() == []
        path = nex_env.home / "sessions" / "f" / "journal.jsonl"
        end = json.loads(path.read_text().splitlines()[-1])
        assert (end["status"], end["exit_reason"]) == ("limit", "output_limit")

        # The next run of the session (a resume: the note must survive the process).
        again = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--context-window", "32768", "--chat", "f",
            "--autonomous", "go on",
        )  # fmt: skip
        assert again.code == 0 and again.stdout == ANSWER + "\n", again.stderr
        first, last = srv.requests[-2]["messages"], srv.requests[-1]["messages"]
    assert last[: len(first)] == first  # earlier messages byte for byte as before
    assert last[len(first)]["content"] == PARTIAL
    note = last[-1]["content"]
    assert note.startswith("go on\n\n[nex] Your previous answer was cut off at the output limit")
    assert [m["role"] for m in last[len(first) :]] == ["assistant", "user"]


def _ok(nex_env: NexEnv, result: Result) -> None:
    _no_traceback(result)
    assert result.code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    roles = [m["role"] for m in _journal(nex_env)]
    assert roles == ["user", "assistant", "tool", "assistant"]


# -- the REPL: text already shown is never shown twice -------------------------------------------
REPL_ANSWER = "alpha bravo charlie delta echo foxtrot"


@pytest.mark.tmux
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize(
    ("fault", "warning"),
    [
        ({"fault": "drop", "after_chunks": 4}, "cut mid-answer"),
        ({"fault": "hang", "after_chunks": 4}, "stopped sending mid-answer for 2 s"),
    ],
    ids=["reset", "hang"],
)
def test_repl_retry_mid_stream_shows_the_answer_once(
    repl,  # noqa: F811
    nex_env: NexEnv,
    fault: dict[str, Any],
    warning: str,
) -> None:
    nex_env.env["NEX_IDLE_TIMEOUT"] = IDLE
    script = {"replies": [{**fault, "content": REPL_ANSWER}], "default": {"content": REPL_ANSWER}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv)
        pane.send("go")
        pane.wait("foxtrot")
        screen = pane.wait_prompt()
        answer = screen.partition("› go")[2]
        assert warning in answer
        # The first attempt showed "alpha bravo charlie"; the retry shows only what follows.
        for word in REPL_ANSWER.split():
            assert answer.count(word) == 1, answer
        assert len(srv.requests) == 2


@pytest.mark.tmux
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_repl_error_is_one_line_and_the_repl_goes_on(repl, nex_env: NexEnv) -> None:  # noqa: F811
    script = {"replies": [{"fault": "status", "status": 401}], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv)
        pane.send("first")
        pane.wait("refused the credentials")
        pane.wait_prompt()
        pane.send("second")
        # The failed turn left "first" unanswered; it is merged with "second", not dropped.
        screen = pane.wait(lambda s: "echo: first" in s.partition("› second")[2], "the answer")
        assert screen.count("error: HTTP 401") == 1
        assert srv.rejections == []
