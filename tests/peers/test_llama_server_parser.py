"""The real C++ llama-server's own output parser failing on what the model wrote (issue 13 item 3).

llama-server parses every chat answer with a parser built for the template's family, and
answers HTTP 500 when the output does not fit it. Command R7B's template on the tiny GGUF
(tests/peers/gguf_model.py) reproduces it on every request: its generation prompt ends in
`<|CHATBOT_TOKEN|>`, whose last byte `>` this model answers with a Hermes `<tool_call>` written
as text, where the parser expects `<|START_ACTION|>`/`<|START_RESPONSE|>`. The server says
"The model produced output that does not match the expected peg-native format", streamed or
not, with or without `tools`. nex retries, then asks for the raw text (nexpy.rawtext) and
recovers the call itself.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import NexEnv
from tests.peers.llama_server import BASH_TOOL, SERVER_BIN, TEMPLATES, LlamaCppServer

pytestmark = [pytest.mark.peer, pytest.mark.timeout(300)]

TEMPLATE = "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"
PARSER_500 = "does not match the expected peg-native format"
CALL_CHAIN = [
    "<tool_call>",
    '\n{"name": "bash", ',
    '"arguments": {"command": ',
    '"echo llama-ok"}}\n',
    "</tool_call>",
]


@pytest.fixture(scope="module")
def command_r7b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """llama-server --jinja on a GGUF carrying Command R7B's real tool-use template."""
    if not SERVER_BIN.exists() or not (TEMPLATES / TEMPLATE).exists():
        pytest.fail(f"no llama-server at {SERVER_BIN} or no {TEMPLATE}: run make peers")
    from tests.peers.gguf_model import write_model

    folder = tmp_path_factory.mktemp("command-r7b")
    model = write_model(
        folder / "command-r7b.gguf",
        template=(TEMPLATES / TEMPLATE).read_text(encoding="utf-8"),
        chains={">": CALL_CHAIN},
    )
    server = LlamaCppServer(model, folder / "server.log")
    yield server
    server.stop()


def _post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("tools", [True, False], ids=["with-tools", "without-tools"])
def test_the_server_refuses_its_own_models_output(command_r7b: LlamaCppServer, tools: bool) -> None:
    """The fault itself, on the wire: a 500 naming the parser, every time, tools or not."""
    body: dict = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    if tools:
        body["tools"] = [BASH_TOOL]
    for _ in range(3):
        status, text = _post(command_r7b.url + "/chat/completions", body)
        assert status == 500 and PARSER_500 in text, (status, text)


def test_nex_asks_for_raw_text_and_runs_the_call(
    nex_env: NexEnv, command_r7b: LlamaCppServer
) -> None:
    # Every turn of this one-token-memory model writes the same call: the first runs it,
    # then the turn limit ends the run (exit 3) with a summary asked without tools.
    result = nex_env.run(
        "-m", "local:command-r7b", "-e", command_r7b.url, "--chat", "r7b", "--max-turns", "1",
        "--autonomous", "run echo",
        timeout=240,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "raw text" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("warning:") and PARSER_500 in warnings[0]
    assert result.code == 3, result.stderr
    assert [e for e in result.error_lines() if "raw" in e or "parse" in e] == []
    entries = [
        json.loads(line)
        for line in (nex_env.home / "sessions" / "r7b" / "journal.jsonl").read_text().splitlines()
    ]
    results = [
        e["message"]["content"]
        for e in entries
        if e["kind"] == "message" and e["message"]["role"] == "tool"
    ]
    assert results and all("llama-ok" in r for r in results), results
    calls = [
        e["message"]["tool_calls"][0]["function"]["name"]
        for e in entries
        if e["kind"] == "message" and e["message"].get("tool_calls")
    ]
    assert calls == ["bash"] * len(results)
