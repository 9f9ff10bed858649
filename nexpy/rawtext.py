"""Asking llama.cpp for the model's raw text, when its own output parser fails on it.

llama-server parses every chat answer with a per-family parser (PEG, generated from the chat
template) and answers HTTP 500 when the model's output does not fit it ("The model produced
output that does not match the expected peg-native format", "Failed to parse input at pos N").
Leaving `tools` out does not help: the parser runs on every chat answer (measured on the real
server with Command R7B's template). What it does not parse is a text completion, so the raw
text is asked for in two of its own requests: `/apply-template` renders the conversation with
the model's template (the tools described in the system prompt, past calls as text: the
`tools-in-prompt` adaptation of nexpy.adapt), and `/v1/completions` completes that prompt.
The caller recovers tool calls from the text with nex's own extractor (nexpy.toolcalls).
"""

from __future__ import annotations

from typing import Any

from nexpy import adapt

RULE = "tools-in-prompt"


def server_root(endpoint: str) -> str:
    """llama-server's root URL (where /apply-template is) from its OpenAI base URL."""
    root = endpoint.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


async def complete(
    client: Any,
    endpoint: str,
    *,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    adaptations: list[str],
    headers: dict[str, str],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """The model's raw answer as a chat completion body (`choices[0].message.content`, its
    finish reason and usage). `fields` go into the completion request (model, max_tokens, the
    user's sampling settings); `client` is an httpx.AsyncClient. Raises httpx's errors."""
    body = adapt.apply([*adaptations, RULE], {"messages": messages, "tools": tools})
    rendered = await client.post(
        server_root(endpoint) + "/apply-template",
        json={"messages": body["messages"]},
        headers=headers,
    )
    rendered.raise_for_status()
    prompt = rendered.json()["prompt"]
    response = await client.post(
        endpoint.rstrip("/") + "/completions",
        json={**fields, "prompt": prompt, "stream": False},
        headers=headers,
    )
    response.raise_for_status()
    data = response.json()
    choice = data["choices"][0]
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice.get("text") or ""},
                "finish_reason": choice.get("finish_reason"),
            }
        ],
        "usage": data.get("usage"),
    }
