"""The scripting proxy between nex and a real rendering engine.

A tiny model's output is noise, so a real engine cannot play a scripted session. The proxy
splits the two jobs: every chat request nex sends is forwarded to the real engine (the
template-mode stub, or the C++ llama-server) with ``max_tokens: 1``, so the engine renders the
real history with the real template and accepts or refuses it; an accepted request is answered
with the next scripted reply, a refusal is passed back to nex verbatim.

Between the two sits ``nexpy.adapt``: a refusal that a rule answers is learned, and that request
and every later one are forwarded through the learned rules. This stands in for the request
path's own learning, which lands after the architecture refactor (issue 10); the table reports
which rules each template needed. Once ``tools-in-prompt`` is learned, the engine gets no tool
fields, so scripted tool calls are answered as Hermes ``<tool_call>`` text, which nex must
recover with its text extractor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from aiohttp import web

from nexpy import adapt
from stubs.oai import StubServer
from stubs.script import Script


class _TextCalls:
    """The script, with tool calls turned into Hermes text while ``textual()`` says so."""

    def __init__(self, script: Script, proxy: AdaptingProxy) -> None:
        self._script = script
        self._proxy = proxy
        self.model = script.model

    def next(self) -> dict[str, Any]:
        reply = dict(self._script.next())
        calls = reply.pop("tool_calls", None)
        if not calls:
            return reply if calls is None else {**reply, "tool_calls": calls}
        if "tools-in-prompt" not in self._proxy.learned:
            return {**reply, "tool_calls": calls}
        text = [reply.get("content") or ""]
        for call in calls:
            payload = {"name": call["name"], "arguments": call.get("arguments", {})}
            text.append(f"<tool_call>\n{json.dumps(payload)}\n</tool_call>")
        return {**reply, "content": "\n".join(t for t in text if t)}


class AdaptingProxy(StubServer):
    """A scripted OpenAI server that lets a real engine accept or refuse each request first."""

    def __init__(self, script: Any, upstream: str, **kw: Any) -> None:
        super().__init__(script, **kw)
        self.upstream = upstream.rstrip("/")
        self.script = _TextCalls(self.script, self)  # type: ignore[assignment]
        self.learned: list[str] = []
        self.refusals: list[str] = []  # every refusal the engine sent, in order
        self.accepted: list[dict[str, Any]] = []  # each request as the engine accepted it
        self._client: httpx.AsyncClient | None = None

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
        while True:
            adapted = adapt.apply(self.learned, body)
            status, raw = await self._engine(adapted)
            if status < 400:
                self.accepted.append(adapted)
                return await super()._chat(request)
            message = error_message(raw)
            self.refusals.append(message)
            rule = adapt.learn(message, self.learned)
            if rule is None:  # nothing answers it: nex gets the engine's refusal as it was
                return web.Response(status=status, body=raw, content_type="application/json")
            self.learned.append(rule.name)

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
