"""A scripted Anthropic Messages API server: what claude-code talks to via ANTHROPIC_BASE_URL.

Command line::

    python -m stubs.anthropic --port 0 --script FILE [--host 127.0.0.1]

binds, prints exactly one line ``http://HOST:PORT`` (the value for ``ANTHROPIC_BASE_URL``:
the client adds ``/v1/messages`` itself) and serves until SIGTERM or SIGINT. In-process::

    with anthropic_server({"replies": [{"content": "hi"}]}) as srv:
        env["ANTHROPIC_BASE_URL"] = srv.base_url
        srv.requests  # [{"method", "path", "query", "headers", "body"}, ...]

Endpoints: ``HEAD /`` and ``GET /`` (claude-code probes the base URL first),
``POST /v1/messages`` (SSE when ``stream`` is true, else one JSON message),
``POST /v1/messages/count_tokens``, ``GET /_stub/requests``. The script format is
``stubs/script.py``'s: ``content`` and ``echo`` become a text block, ``tool_calls`` become
``tool_use`` blocks; faults are the same (``stream_error`` is an SSE ``error`` event, as the
real API sends when overloaded mid-stream). Only ``/v1/messages`` consumes script replies.
Never imports ``nexpy``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from stubs.oai import count_tokens
from stubs.server import ScriptedServer, ScriptLike, serve_main, status_fault

__all__ = ["AnthropicServer", "anthropic_server", "last_user_text", "main"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _blocks_text(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
    return []


def last_user_text(body: Mapping[str, Any]) -> str:
    """The last text a person typed: the last user text block that is not a system reminder
    claude-code inserted around it."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            texts = [
                t
                for t in _blocks_text(message.get("content"))
                if not t.lstrip().startswith("<system-reminder>")
            ]
            if texts:
                return texts[-1]
    return ""


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _sse(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


class _Message:
    """The assistant message one reply makes, whole or as the SSE events that stream it."""

    def __init__(self, reply: Mapping[str, Any], body: Mapping[str, Any], model: str) -> None:
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.model = str(body.get("model") or model)
        self.blocks: list[dict[str, Any]] = []
        text = "echo: " + last_user_text(body) if reply.get("echo") else reply.get("content")
        if text is not None:
            self.blocks.append({"type": "text", "text": str(text)})
        for call in reply.get("tool_calls") or ():
            args = call.get("arguments") or {}
            self.blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_" + uuid.uuid4().hex[:20],
                    "name": call["name"],
                    "input": json.loads(args) if isinstance(args, str) else dict(args),
                }
            )
        if not self.blocks:
            self.blocks.append({"type": "text", "text": ""})
        has_tools = any(b["type"] == "tool_use" for b in self.blocks)
        self.stop_reason = reply.get("finish_reason") or ("tool_use" if has_tools else "end_turn")
        prompt = count_tokens(json.dumps(body.get("messages") or []))
        completion = count_tokens(json.dumps(self.blocks))
        self.usage: dict[str, Any] = {
            "input_tokens": prompt,
            "output_tokens": completion,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if isinstance(reply.get("usage"), Mapping):
            self.usage.update(reply["usage"])
        size = reply.get("chunk_size")
        self.chunk_size = int(size) if size else 0

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage,
        }

    def _pieces(self, text: str) -> list[str]:
        size = self.chunk_size or max(1, -(-len(text) // 3))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]

    def events(self) -> list[bytes]:
        start = {**self.whole(), "content": [], "stop_reason": None}
        start["usage"] = {**self.usage, "output_tokens": 1}
        out = [_sse("message_start", {"message": start})]
        for index, block in enumerate(self.blocks):
            if block["type"] == "text":
                out.append(
                    _sse(
                        "content_block_start",
                        {"index": index, "content_block": {"type": "text", "text": ""}},
                    )
                )
                out += [
                    _sse(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": piece}},
                    )
                    for piece in self._pieces(block["text"])
                ]
            else:
                head = {**block, "input": {}}
                out.append(_sse("content_block_start", {"index": index, "content_block": head}))
                out += [
                    _sse(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "input_json_delta", "partial_json": p}},
                    )
                    for p in self._pieces(json.dumps(block["input"]))
                ]
            out.append(_sse("content_block_stop", {"index": index}))
        out.append(
            _sse(
                "message_delta",
                {
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": self.usage["output_tokens"]},
                },
            )
        )
        out.append(_sse("message_stop", {}))
        return out


class AnthropicServer(ScriptedServer):
    """The Messages API on a threaded stub server; ``requests`` keep method, path and headers."""

    cli_module = "stubs.anthropic"  # url is base_url, what ANTHROPIC_BASE_URL takes: no /v1

    @property
    def requests(self) -> list[Any]:
        """Every request received as {"method", "path", "query", "headers", "body"} (a copy)."""
        return self.records

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)  # aiohttp answers HEAD with the GET handler
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/_stub/requests", self._stub_requests)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(status=200, text="ok")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        _, body, _ = await self._receive(request)
        messages = body.get("messages") if isinstance(body, dict) else None
        return web.json_response({"input_tokens": count_tokens(json.dumps(messages or []))})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        parsed, body, _ = await self._receive(request)
        if not parsed or not isinstance(body, dict):
            err = _error_body(400, "the body must be a JSON object")
            return web.json_response(err, status=400)
        reply = self.script.next()
        if reply.get("delay"):
            await asyncio.sleep(float(reply["delay"]))
        fault = reply.get("fault")
        if fault in ("status", "html"):
            return status_fault(reply, fault, _error_body)
        if fault in ("unfinished", "repeat", "event_error"):
            return web.json_response(
                _error_body(500, f"stub: fault {fault!r} is not scripted for this API"), status=500
            )
        message = _Message(reply, body, self.script.model)
        if not body.get("stream"):
            if fault == "hang":
                await self._hang(request)
                self._abort(request)
                return web.Response(status=204)
            return web.json_response(message.whole())
        events = message.events()
        resp = await self._open_stream(request)
        after = int(reply.get("after_chunks") or 0)
        if fault in ("hang", "drop", "cut", "malformed", "stream_error"):
            events = events[:after]
        elif fault == "empty":
            events = []
        await self._send(resp, events, float(reply.get("chunk_delay") or 0))
        if fault == "hang":
            await self._hang(request)
            self._abort(request)
            return resp
        if fault in ("drop", "cut"):
            (self._abort if fault == "drop" else self._cut)(request)
            return resp
        if fault == "malformed":
            await resp.write(b"event: content_block_delta\ndata: {not json\n\n")
        elif fault == "stream_error":
            err = reply.get("body")
            if not isinstance(err, Mapping):
                text = (
                    err if isinstance(err, str) else "stub fault: error in the middle of a stream"
                )
                err = {"type": "overloaded_error", "message": text}
            await resp.write(_sse("error", {"error": err}))
        await resp.write_eof()
        return resp


def anthropic_server(script: ScriptLike = None, **kw: Any) -> AnthropicServer:
    """``with anthropic_server({...}) as srv:`` — a server started on entering, stopped on exit."""
    return AnthropicServer(script, **kw)


def main(argv: list[str] | None = None) -> int:
    return serve_main(AnthropicServer, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
