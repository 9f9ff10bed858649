"""The bench's real llama-server prefill row (bench.prefill.replay) on hand-made requests: what
the server reports it processed (`timings.prompt_n`) against the ideal the row divides by.

A conversation whose every request extends the previous one must cost the ideal, within the one
token the server generated after each prompt; one that rewrites its first user message makes
the server process the whole prompt again, which the ideal does not count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from bench.prefill import TEMPLATE, replay
from tests.peers.llama_server import SERVER_BIN, LlamaCppServer

pytestmark = [pytest.mark.peer, pytest.mark.timeout(300)]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the work dir.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    if not SERVER_BIN.exists() or not TEMPLATE.exists():
        pytest.fail(f"no llama-server at {SERVER_BIN} or no {TEMPLATE}: run make peers")
    from tests.peers.gguf_model import OK_CHAIN, write_model

    folder = tmp_path_factory.mktemp("prefill-replay")
    model = write_model(
        folder / "qwen3-coder.gguf", template=TEMPLATE.read_text(encoding="utf-8"), chains=OK_CHAIN
    )
    srv = LlamaCppServer(model, folder / "llama-server.log", n_ctx=8192)
    yield srv
    srv.stop()


def _conversation(rounds: int, system: str) -> list[dict]:
    """The requests of a `rounds`-round read_file session, each extending the one before.

    Each test has its own system prompt: the server keeps earlier prompts in host memory
    (`--cache-ram`) and would serve one test's prompts from another's."""
    messages: list[dict] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Read every part file, then report."},
    ]
    bodies = [{"messages": copy.deepcopy(messages), "tools": TOOLS}]
    for k in range(rounds):
        call = {
            "id": f"c{k}",
            "type": "function",
            "function": {"name": "read_file", "arguments": f'{{"path": "part_{k}.txt"}}'},
        }
        rows = "\n".join(f"part {k} row {i} value={i * 7919 % 10007}" for i in range(20))
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{k}", "content": rows},
        ]
        bodies.append({"messages": copy.deepcopy(messages), "tools": TOOLS})
    return bodies


def test_a_conversation_that_extends_its_prompts_costs_the_ideal(server: LlamaCppServer) -> None:
    got = replay(server.base_url, _conversation(4, "You are a coding agent."))
    assert got.requests == 5 and got.ideal > 1000
    # The one token generated after each prompt sits in the cache where the next prompt differs.
    assert abs(got.processed - got.ideal) <= got.requests, got
    assert got.cached > got.processed  # the later requests came mostly from the cache


def test_a_rewritten_first_message_is_processed_again(server: LlamaCppServer) -> None:
    bodies = _conversation(4, "You are an agent that reads files.")
    bodies[-1]["messages"][1]["content"] = "Read every part file, then report anomalies."
    got = replay(server.base_url, bodies)
    # The last request is processed from the user message on, not from its last call: the
    # three rounds before it (~500 tool-result bytes each, a token a byte) are processed twice.
    earlier = sum(len(m["content"]) for m in bodies[-1]["messages"][3:8:2])
    assert earlier > 1000
    assert got.processed - got.ideal >= earlier, got
