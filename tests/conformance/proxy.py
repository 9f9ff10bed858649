"""The scripting proxy between nex and a real rendering engine.

A tiny model's output is noise, so a real engine cannot play a scripted session. The proxy
splits the two jobs: every chat request nex sends is forwarded, exactly as nex sent it, to the
real engine (the template-mode stub, or the C++ llama-server) with ``max_tokens: 1``, so the
engine renders the real history with the real template and accepts or refuses it. An accepted
request is answered with the next scripted reply; a refusal goes back to nex verbatim, and nex
itself must learn the adaptation (``nexpy.adapt``, through the request path) and send the request
again. What nex learned is read from its journal, not from here.

An engine whose output parser fails on the one random token the tiny model writes (llama.cpp's
"does not match the expected … format") rendered the request: that counts as accepted.

A request without ``tools`` (nex has learned ``tools-in-prompt``: the tools are described in the
system prompt) gets its scripted tool calls as Hermes ``<tool_call>`` text, which nex must
recover with its text extractor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from aiohttp import web

from nexpy.classify import unparsed_output
from stubs.oai import StubServer


class _TextCalls:
    """The script, with tool calls written as Hermes text when the request had no tools."""

    def __init__(self, script: Any) -> None:
        self._script = script
        self.model = script.model
        self.textual = False  # set per request by the proxy

    def next(self, asked: str = "") -> dict[str, Any]:
        reply = dict(self._script.next(asked))
        calls = reply.get("tool_calls")
        if not calls or not self.textual:
            return reply
        del reply["tool_calls"]
        text = [reply.get("content") or ""]
        for call in calls:
            payload = {"name": call["name"], "arguments": call.get("arguments", {})}
            text.append(f"<tool_call>\n{json.dumps(payload)}\n</tool_call>")
        return {**reply, "content": "\n".join(t for t in text if t)}


class ScriptingProxy(StubServer):
    """A scripted OpenAI server that lets a real engine accept or refuse each request first."""

    def __init__(self, script: Any, upstream: str, **kw: Any) -> None:
        super().__init__(script, **kw)
        self.upstream = upstream.rstrip("/")
        self.calls = _TextCalls(self.script)
        self.script = self.calls  # type: ignore[assignment]
        self.refusals: list[str] = []  # every refusal the engine sent, in order
        self.accepted: list[dict[str, Any]] = []  # each request the engine accepted
        self.marks: list[int] = []  # len(refusals) at each mark(): refusals per nex run
        self._client: httpx.AsyncClient | None = None

    def mark(self) -> None:
        """Start counting the next run's refusals."""
        self.marks.append(len(self.refusals))

    async def _engine(self, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """The engine's status and body for `body`, rendered and cut to one token."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60)
        sent = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        sent["max_tokens"] = 1
        r = await self._client.post(self.upstream + "/chat/completions", json=sent)
        return r.status_code, r.content

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())  # aiohttp keeps it for the scripted answer
        status, raw = await self._engine(body)
        if status >= 400 and unparsed_output(error_message(raw)):
            # llama.cpp rendered the prompt and then failed to parse the one random token the
            # tiny model wrote: a fact about that token, not about the request.
            status = 200
        if status >= 400:
            self.refusals.append(error_message(raw))
            return web.Response(status=status, body=raw, content_type="application/json")
        self.accepted.append(body)
        self.calls.textual = not body.get("tools")
        return await super()._chat(request)

    async def _astop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await super()._astop()


def error_message(raw: bytes) -> str:
    """The message of an OpenAI-shaped error body (vLLM's, llama.cpp's), else its text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return raw.decode("utf-8", "replace").strip()
