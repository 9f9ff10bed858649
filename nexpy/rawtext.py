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

import nexpy.adapt as adapt
from nexpy.errors import ProviderError

RULE = "tools-in-prompt"


class Refused(Exception):
    """A non-2xx answer to one of the two requests; `status_code` and `response` are what
    nexpy.classify reads from any HTTP error."""

    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text}")
        self.status_code = response.status_code
        self.response = response


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
    user's sampling settings); `client` is an httpx.AsyncClient. Raises `Refused` for an HTTP
    error, httpx's errors for the connection."""
    body = adapt.apply([*adaptations, RULE], {"messages": messages, "tools": tools})
    rendered = await client.post(
        server_root(endpoint) + "/apply-template",
        json={"messages": body["messages"]},
        headers=headers,
    )
    if rendered.status_code == 404:
        raise ProviderError(
            f"{endpoint} cannot give the raw text (no /apply-template: not llama.cpp's server)",
            hint="its output parser fails on what this model writes: serve the model with a "
            "chat template that matches it",
            status=404,
        )
    if rendered.status_code >= 300:
        raise Refused(rendered)
    prompt = rendered.json()["prompt"]
    response = await client.post(
        endpoint.rstrip("/") + "/completions",
        json={**fields, "prompt": prompt, "stream": False},
        headers=headers,
    )
    if response.status_code >= 300:
        raise Refused(response)
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
