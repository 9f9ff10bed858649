"""A real llama.cpp server: llama-cpp-python's `llama_cpp.server` (installed by `make peers`)
serving tiny GGUF models these tests write (tests/peers/gguf_model.py), driven through `nex`.

Three servers, started once per session: a strict template (roles must alternate; it answers
"ok") and a tool template (it writes a Hermes tool call as text after a user turn, "ok" after a
tool result), each with n_ctx 8192, and the tool model again with n_ctx 512. The server's real
quirks are part of what is tested: a template exception is a 500 when not streamed but an empty
200 stream when streamed, a prompt over n_ctx likewise, and the next request on that connection
may be reset.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NexEnv, Result
from tests.peers.llama_server import LIB_DIR, ServerFailed
from tests.peers.llama_server import LlamaCppPythonServer as LlamaServer

pytestmark = [pytest.mark.peer, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def gguf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two test models, written once per session."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        pytest.fail(f"the real llama.cpp tier needs gguf ({e}): run make peers")
    # Not imported here: its ctypes bindings load the shared libraries only the server's
    # environment points at (LLAMA_CPP_LIB_PATH).
    if importlib.util.find_spec("llama_cpp") is None or not LIB_DIR.is_dir():
        pytest.fail("the llama.cpp tier needs llama-cpp-python and its llama.cpp build: make peers")
    from tests.peers.gguf_model import (
        OK_CHAIN,
        STRICT_TEMPLATE,
        TOOL_CHAINS,
        TOOLS_TEMPLATE,
        write_model,
    )

    folder = tmp_path_factory.mktemp("gguf")
    return {
        "strict": write_model(folder / "strict.gguf", template=STRICT_TEMPLATE, chains=OK_CHAIN),
        "tools": write_model(folder / "tools.gguf", template=TOOLS_TEMPLATE, chains=TOOL_CHAINS),
    }


def _server(name: str, n_ctx: int) -> Callable[..., Iterator[LlamaServer]]:
    @pytest.fixture(scope="session")
    def fixture(
        gguf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[LlamaServer]:
        log = tmp_path_factory.mktemp("llama") / f"{name}-{n_ctx}.log"
        try:
            server = LlamaServer(gguf_models[name], n_ctx, log)
        except ServerFailed as e:
            pytest.fail(str(e))
        yield server
        server.stop()

    return fixture


strict_server = _server("strict", 8192)
tools_server = _server("tools", 8192)
small_server = _server("tools", 512)


def _nex(nex_env: NexEnv, server: LlamaServer, chat: str, message: str, *extra: str) -> Result:
    return nex_env.run(
        "-m", "local:tiny", "-e", server.url, "--chat", chat, *extra, "--json", "--autonomous",
        message, timeout=120,
    )  # fmt: skip


def _final(result: Result) -> list[str]:
    return [e["content"] for e in result.events if e["type"] == "message" and e.get("final")]


def _messages(nex_env: NexEnv, chat: str) -> list[dict]:
    entries = nex_env.journal(chat)
    assert entries[-1]["kind"] == "end"
    return [e["message"] for e in entries if e["kind"] == "message"]


def test_five_turns_back_to_back_in_one_session(
    nex_env: NexEnv, strict_server: LlamaServer
) -> None:
    for n in range(5):
        result = _nex(nex_env, strict_server, "five", f"message {n}")
        assert result.code == 0, result.stderr + strict_server.tail()
        assert _final(result) == ["ok"]
    # The strict template rendered every request: the history alternates exactly.
    roles = [m["role"] for m in _messages(nex_env, "five")]
    assert roles == ["user", "assistant"] * 5


def test_a_session_with_tool_results(nex_env: NexEnv, tools_server: LlamaServer) -> None:
    for n in range(2):
        result = _nex(nex_env, tools_server, "tools", f"run the check, round {n}")
        assert result.code == 0, result.stderr + tools_server.tail()
        events = result.events
        # The server returned the call as text; nex recovered it and ran it.
        call = next(e for e in events if e["type"] == "tool.call")
        assert (call["name"], call["arguments"]) == ("bash", {"command": "echo llama-ok"})
        tool = next(e for e in events if e["type"] == "tool.result")
        assert tool["ok"] and "llama-ok" in tool["output"]
        assert _final(result) == ["ok"]
        assert not any(
            "<tool_call>" in e.get("content", "") for e in events if e["type"] == "message"
        )
    roles = [m["role"] for m in _messages(nex_env, "tools")]
    assert roles == ["user", "assistant", "tool", "assistant"] * 2


def test_overflow_at_n_ctx_512_ends_in_one_line(nex_env: NexEnv, small_server: LlamaServer) -> None:
    result = _nex(nex_env, small_server, "big", "please read this: " + "lorem ipsum " * 300)
    assert "Traceback" not in result.stderr
    assert result.code == 3, result.stderr + small_server.tail()
    errors = result.error_lines()
    assert len(errors) == 1 and "context" in errors[0], result.stderr
    # The window came from the server's own error: it streams nothing for an oversized prompt,
    # and the unstreamed retry carries the 400 that names n_ctx.
    warnings = [e["message"] for e in result.events if e["type"] == "warning"]
    assert any("512" in w for w in warnings), warnings
    ended = result.events[-1]
    assert ended["type"] == "session.ended" and ended["exit_reason"] == "context_limit"
    assert [m["role"] for m in _messages(nex_env, "big")] == ["user"]


def test_a_template_without_tool_support_is_adapted_after_its_empty_stream(
    nex_env: NexEnv, tools_server: LlamaServer, strict_server: LlamaServer
) -> None:
    first = _nex(nex_env, tools_server, "mixed", "run the check")
    assert first.code == 0, first.stderr
    # The same session against a template that cannot render tool messages: the streamed
    # request gets an empty 200, the unstreamed retry the template's 500, whose words name the
    # adaptation (tools in the prompt, calls and results as text); the adapted request renders.
    result = _nex(nex_env, strict_server, "mixed", "and again")
    assert "Traceback" not in result.stderr
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.events if e["type"] == "warning"]
    adapted = [w for w in warnings if "adapting it from now on: tools-in-prompt" in w]
    assert len(adapted) == 1, warnings
    assert "Conversation roles must alternate" not in " ".join(result.error_lines())
    learned = [e for e in nex_env.journal("mixed") if e["kind"] == "adaptation"]
    assert [e["rule"] for e in learned] == ["tools-in-prompt"]
    assert "Conversation roles must alternate" in learned[0]["refusal"]
    # The session stays one conversation: the tool server takes it on.
    again = _nex(nex_env, tools_server, "mixed", "once more")
    assert again.code == 0, again.stderr
    assert _final(again) == ["ok"]


def test_doctor_reports_the_real_n_ctx(nex_env: NexEnv, small_server: LlamaServer) -> None:
    result = nex_env.run("doctor", "-m", "local:tiny", "-e", small_server.url, timeout=120)
    assert result.code == 0, result.stdout + result.stderr
    window = next(line for line in result.stdout.splitlines() if " window " in line)
    assert "512 tokens" in window and "llama-cpp-python" in window
    assert result.stdout.splitlines()[-1].startswith("verdict: usable")


def test_doctor_names_a_template_without_tool_support(
    nex_env: NexEnv, strict_server: LlamaServer
) -> None:
    result = nex_env.run("doctor", "-m", "local:tiny", "-e", strict_server.url, timeout=120)
    assert result.code == 1, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert any("8,192 tokens" in row for row in rows if " window " in row)
    verdict = rows[-1]
    assert verdict.startswith("verdict: not usable: tool calls:")
    assert "chat template rejected the conversation" in verdict and "--jinja" in verdict
