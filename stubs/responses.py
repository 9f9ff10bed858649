"""A scripted OpenAI Responses API server: the one wire format codex 0.169 speaks.

Command line::

    python -m stubs.responses --port 0 --script FILE [--host 127.0.0.1]

binds, prints exactly one line ``http://HOST:PORT/v1`` to stdout, and serves until SIGTERM or
SIGINT. In-process::

    with responses_server({"replies": [{"content": "hi"}]}) as srv:
        ... codex -c 'model_providers.stub.base_url="<srv.url>"' ...
        srv.requests  # [{"method", "path", "query", "headers", "body"}, ...]

Endpoints: ``POST /v1/responses`` (always streamed as SSE, each event an ``event: NAME`` line
plus a ``data:`` line, in the order codex accepted them when recorded here),
``GET /v1/models``, ``GET /_stub/requests``. The script format is ``stubs/script.py``'s:
``content`` and ``echo`` become an output message, ``tool_calls`` become ``function_call``
items, faults are the same (``stream_error`` is a ``response.failed`` event). Never imports
``nexpy``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from stubs.oai import count_tokens
from stubs.server import ScriptedServer, ScriptLike, serve_main, status_fault

__all__ = ["ResponsesServer", "main", "responses_server"]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") != "image"
        )
    return ""


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message in a Responses request's ``input``."""
    items = body.get("input")
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text_of(item.get("content"))
    return ""


def _sse(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


class _Turn:
    """The output items one reply makes, and the SSE events that stream them."""

    def __init__(self, reply: Mapping[str, Any], body: Mapping[str, Any], model: str) -> None:
        self.id = "resp_" + uuid.uuid4().hex[:24]
        self.model = str(body.get("model") or model)
        self.created = int(time.time())
        self.seq = 0
        if reply.get("echo"):
            text: str | None = "echo: " + last_user_text(body)
        else:
            text = None if reply.get("content") is None else str(reply["content"])
        self.text = text
        self.calls = [
            {
                "name": call["name"],
                "arguments": (
                    call.get("arguments")
                    if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments") or {})
                ),
                "call_id": call.get("id") or "call_" + uuid.uuid4().hex[:12],
            }
            for call in reply.get("tool_calls") or ()
        ]
        if self.text is None and not self.calls:
            self.text = ""
        prompt = count_tokens(json.dumps(body.get("input") or []))
        completion = count_tokens((self.text or "") + "".join(c["arguments"] for c in self.calls))
        self.usage: dict[str, Any] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
        if isinstance(reply.get("usage"), Mapping):
            self.usage.update(reply["usage"])
        size = reply.get("chunk_size")
        self.chunk_size = int(size) if size else 0

    def _event(self, name: str, **data: Any) -> bytes:
        self.seq += 1
        return _sse(name, {"sequence_number": self.seq, **data})

    def _response(self, status: str, output: list[Any]) -> dict[str, Any]:
        resp: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
        }
        if status == "completed":
            resp["usage"] = self.usage
        return resp

    def _pieces(self, text: str) -> list[str]:
        size = self.chunk_size or max(1, -(-len(text) // 3))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]

    def events(self) -> list[bytes]:
        out = [
            self._event("response.created", response=self._response("in_progress", [])),
            self._event("response.in_progress", response=self._response("in_progress", [])),
        ]
        done: list[dict[str, Any]] = []
        index = 0
        if self.text is not None:
            item_id = "msg_" + uuid.uuid4().hex[:24]
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            out.append(self._event("response.content_part.added", part=part, **where))
            out += [
                self._event("response.output_text.delta", delta=piece, **where)
                for piece in self._pieces(self.text)
            ]
            final_part = {**part, "text": self.text}
            out.append(self._event("response.output_text.done", text=self.text, **where))
            out.append(self._event("response.content_part.done", part=final_part, **where))
            item = {**item, "status": "completed", "content": [final_part]}
            out.append(self._event("response.output_item.done", output_index=index, item=item))
            done.append(item)
            index += 1
        for call in self.calls:
            item_id = "fc_" + uuid.uuid4().hex[:24]
            item = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "name": call["name"],
                "call_id": call["call_id"],
                "arguments": "",
            }
            where = {"item_id": item_id, "output_index": index}
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            out += [
                self._event("response.function_call_arguments.delta", delta=piece, **where)
                for piece in self._pieces(call["arguments"])
            ]
            out.append(
                self._event(
                    "response.function_call_arguments.done", arguments=call["arguments"], **where
                )
            )
            item = {**item, "status": "completed", "arguments": call["arguments"]}
            out.append(self._event("response.output_item.done", output_index=index, item=item))
            done.append(item)
            index += 1
        out.append(self._event("response.completed", response=self._response("completed", done)))
        return out

    def failed(self, message: str, code: str) -> bytes:
        resp = self._response("failed", [])
        resp["error"] = {"code": code, "message": message}
        return self._event("response.failed", response=resp)


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}


class ResponsesServer(ScriptedServer):
    """The Responses API on a threaded stub server; ``requests`` keep method, path and headers."""

    url_path = "/v1"
    cli_module = "stubs.responses"

    @property
    def requests(self) -> list[Any]:
        """Every request received as {"method", "path", "query", "headers", "body"} (a copy)."""
        return self.records

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stub/requests", self._stub_requests)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        parsed, body, _ = await self._receive(request)
        if not parsed or not isinstance(body, dict):
            return web.json_response(_error_body(400, "the body must be a JSON object"), status=400)
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
        turn = _Turn(reply, body, self.script.model)
        events = turn.events()
        resp = await self._open_stream(request)
        delay = float(reply.get("chunk_delay") or 0)
        after = int(reply.get("after_chunks") or 0)
        if fault in ("hang", "drop", "cut", "malformed", "stream_error"):
            events = events[:after]
        elif fault == "empty":
            events = []
        await self._send(resp, events, delay)
        if fault == "hang":
            await self._hang(request)
            self._abort(request)
        elif fault in ("drop", "cut"):
            (self._abort if fault == "drop" else self._cut)(request)
        elif fault == "malformed":
            await resp.write(b"event: response.output_text.delta\ndata: {not json\n\n")
        elif fault == "stream_error":
            err = reply.get("body")
            message = err if isinstance(err, str) else "stub fault: error in the middle of a stream"
            await resp.write(turn.failed(message, "server_error"))
        if fault not in ("hang", "drop", "cut"):
            await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.script.model, "object": "model", "owned_by": "stub"}
        return web.json_response({"object": "list", "data": [model]})


def responses_server(script: ScriptLike = None, **kw: Any) -> ResponsesServer:
    """``with responses_server({...}) as srv:`` — a server started on entering, stopped on exit."""
    return ResponsesServer(script, **kw)


def main(argv: list[str] | None = None) -> int:
    return serve_main(ResponsesServer, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
