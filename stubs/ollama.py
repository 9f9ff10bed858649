"""A scripted Ollama server speaking the native API (``/api/chat``, ``/api/show``, ...).

Command line::

    python -m stubs.ollama --port 0 --script FILE [--context-length N] [--host 127.0.0.1]

binds, prints exactly one line ``http://HOST:PORT`` (Ollama's API has no ``/v1``) and serves
until SIGTERM or SIGINT. In-process::

    with ollama_server({"replies": [{"content": "hi"}]}) as srv:
        srv.requests[-1]["options"]["num_ctx"]

Endpoints: ``POST /api/chat`` (NDJSON stream by default, one JSON object with
``"stream": false``; tools), ``POST /api/show`` (``model_info`` carries the context length),
``GET /api/tags``, ``GET /api/version``, ``GET /`` ("Ollama is running"). Replies come from the
same script format as ``stubs.oai`` (``stubs/script.py``), faults included; errors use Ollama's
``{"error": "..."}`` body. Tool calls go out the way Ollama sends them: whole, in one chunk,
arguments as a JSON object, no call id. Never imports ``nexpy``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from stubs.oai import NGINX_502, _Answer, estimate_prompt_tokens
from stubs.script import Script
from stubs.server import ScriptedServer, ScriptLike, serve_main

__all__ = ["OllamaServer", "main", "ollama_server"]

VERSION = "0.12.3"
NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class OllamaServer(ScriptedServer):
    """A scripted Ollama native-API server on its own event loop in a background thread.
    ``url`` is ``base_url``: Ollama's native API lives under ``/api``, not ``/v1``."""

    cli_module = "stubs.ollama"
    cli_options = (
        (
            "--context-length",
            {"type": int, "default": 32768, "help": "model_info context length"},
        ),
    )

    def __init__(
        self,
        script: Script | Mapping[str, Any] | list[Any] | None = None,
        *,
        context_length: int = 32768,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: str = "chunked",
    ) -> None:
        super().__init__(script, host=host, port=port, framing=framing)
        self.context_length = context_length
        self._shows: list[Any] = []

    @property
    def num_ctx(self) -> list[int | None]:
        """``options.num_ctx`` of each chat request, in order (None where it was not sent)."""
        out: list[int | None] = []
        for body in self.requests:
            options = body.get("options") if isinstance(body, dict) else None
            value = options.get("num_ctx") if isinstance(options, dict) else None
            out.append(value if isinstance(value, int) else None)
        return out

    @property
    def shows(self) -> list[Any]:
        """The ``/api/show`` request bodies received, in order (a copy)."""
        with self._lock:
            return list(self._shows)

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/", self._root)

    # -- metadata -------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    def _details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "8B",
            "quantization_level": "Q4_K_M",
        }

    async def _tags(self, request: web.Request) -> web.Response:
        name = self.script.model
        entry = {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": 4_920_753_328,
            "digest": "0" * 64,
            "details": self._details(),
        }
        return web.json_response({"models": [entry]})

    async def _show(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        with self._lock:
            self._shows.append(body)
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not name:
            return web.json_response({"error": "model is required"}, status=400)
        return web.json_response(
            {
                "modelfile": f"FROM {name}\n",
                "parameters": "stop <|eot_id|>",
                "template": "{{ .Prompt }}",
                "details": self._details(),
                "model_info": {
                    "general.architecture": "llama",
                    "general.parameter_count": 8_030_261_248,
                    "llama.context_length": self.context_length,
                    "llama.embedding_length": 4096,
                },
                "capabilities": ["completion", "tools"],
                "modified_at": _now(),
            }
        )

    # -- chat -----------------------------------------------------------------------------------

    def _final(self, body: Mapping[str, Any], answer: _Answer) -> dict[str, Any]:
        return {
            "model": body.get("model") or self.script.model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length" if answer.finish_reason == "length" else "stop",
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": answer.usage["prompt_tokens"],
            "prompt_eval_duration": 200_000,
            "eval_count": answer.usage["completion_tokens"],
            "eval_duration": 700_000,
        }

    def _ollama_calls(self, answer: _Answer) -> list[dict[str, Any]]:
        return [
            {
                "function": {
                    "index": i,
                    "name": call["function"]["name"],
                    "arguments": _arguments(call["function"]["arguments"]),
                }
            }
            for i, call in enumerate(answer.tool_calls)
        ]

    def _lines(self, body: Mapping[str, Any], answer: _Answer) -> list[bytes]:
        """Every NDJSON line of a streamed answer: text pieces, the tool calls whole, done."""
        model = body.get("model") or self.script.model

        def chunk(message: dict[str, Any]) -> bytes:
            return _line({"model": model, "created_at": _now(), "message": message, "done": False})

        lines = []
        if answer.reasoning:
            lines += [
                chunk({"role": "assistant", "content": "", "thinking": p})
                for p in answer._pieces(answer.reasoning)
            ]
        if answer.content:
            lines += [
                chunk({"role": "assistant", "content": p}) for p in answer._pieces(answer.content)
            ]
        if answer.tool_calls:
            lines.append(
                chunk(
                    {"role": "assistant", "content": "", "tool_calls": self._ollama_calls(answer)}
                )
            )
        lines.append(_line(self._final(body, answer)))
        return lines

    def _whole(self, body: Mapping[str, Any], answer: _Answer) -> dict[str, Any]:
        out = self._final(body, answer)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content or ""}
        if answer.reasoning:
            message["thinking"] = answer.reasoning
        if answer.tool_calls:
            message["tool_calls"] = self._ollama_calls(answer)
        out["message"] = message
        return out

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        parsed, body, _ = await self._receive(request)
        if not parsed:
            return web.json_response({"error": "invalid character in request body"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return web.json_response({"error": "messages must be a list"}, status=400)
        if not body.get("model"):
            return web.json_response({"error": "model is required"}, status=400)

        reply = self.script.next()
        if reply.get("delay"):
            await asyncio.sleep(float(reply["delay"]))
        stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        answer = _Answer(reply, _as_openai(body), self._next_call_id)
        answer.usage["prompt_tokens"] = estimate_prompt_tokens(_as_openai(body))
        fault = reply.get("fault")
        if fault is not None:
            return await self._ollama_fault(request, body, reply, answer, fault, stream)
        if not stream:
            return await self._body(request, json.dumps(self._whole(body, answer)).encode())
        resp = await self._open_ndjson(request)
        await self._send(resp, self._lines(body, answer), float(reply.get("chunk_delay") or 0))
        await resp.write_eof()
        return resp

    async def _open_ndjson(self, request: web.Request) -> web.StreamResponse:
        return await self._open_stream(request, NDJSON)

    async def _ollama_fault(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        reply: Mapping[str, Any],
        answer: _Answer,
        fault: str,
        stream: bool,
    ) -> web.StreamResponse:
        chunk_delay = float(reply.get("chunk_delay") or 0)
        after = int(reply.get("after_chunks") or 0)
        err = reply.get("body")

        if fault in ("status", "stream_error") and (fault == "status" or not stream):
            status = int(reply.get("status") or 500)
            headers = {}
            if reply.get("retry_after") is not None:
                headers["Retry-After"] = str(reply["retry_after"])
            text = err if isinstance(err, str) else json.dumps(err or {"error": f"HTTP {status}"})
            return web.Response(
                status=status, text=text, content_type="application/json", headers=headers
            )
        if fault == "restarted":  # no response on a kept-alive connection (see stubs.oai)
            (self._abort if reply.get("reset") else self._cut)(request)
            return web.Response(status=204)
        if fault == "html":
            status = int(reply.get("status") or 502)
            page = err if isinstance(err, str) else NGINX_502.format(status=status)
            return web.Response(status=status, text=page, content_type="text/html")
        if fault == "hang":
            if stream and after:
                resp = await self._open_ndjson(request)
                await self._send(resp, self._lines(body, answer)[:after], chunk_delay)
            await self._hang(request)
            self._abort(request)
            return web.Response(status=204)
        if fault in ("drop", "cut"):
            cut = self._abort if fault == "drop" else self._cut
            if not stream:
                data = json.dumps(self._whole(body, answer)).encode()
                resp = await self._body(request, data, upto=len(data) // 2)
                cut(request)
                return resp
            resp = await self._open_ndjson(request)
            await self._send(resp, self._lines(body, answer)[:after], chunk_delay)
            cut(request)
            return resp
        if fault == "unfinished":
            # Every line but the last, `done: true` one; the body itself ends properly.
            if not stream:
                whole = self._whole(body, answer)
                whole["done"] = False
                whole.pop("done_reason", None)
                return await self._body(request, json.dumps(whole).encode())
            resp = await self._open_ndjson(request)
            await self._send(resp, self._lines(body, answer)[:-1], chunk_delay)
            await resp.write_eof()
            return resp
        if fault == "repeat":
            resp = await self._open_ndjson(request)
            line = self._lines(body, answer)[0]
            while not self._stopping_now(request):
                await resp.write(line)
                await asyncio.sleep(chunk_delay)
            return resp
        if fault == "malformed":
            resp = await self._open_ndjson(request)
            await self._send(resp, self._lines(body, answer)[:after], chunk_delay)
            await resp.write(b"{not json\n")
            await resp.write_eof()
            return resp
        if fault == "empty":
            resp = await self._open_ndjson(request)
            await resp.write_eof()
            return resp
        if fault == "stream_error":
            resp = await self._open_ndjson(request)
            await self._send(resp, self._lines(body, answer)[:after], chunk_delay)
            message = err if isinstance(err, str) else "stub fault: error in the middle of a stream"
            await resp.write(_line({"error": message}))
            await resp.write_eof()
            return resp
        raise AssertionError(f"unhandled fault {fault!r}")  # Script rejects unknown faults


def _arguments(raw: str) -> Any:
    """Ollama sends arguments as a JSON object; a scripted raw string that is not one stays."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _as_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request in OpenAI shape, for the script's echo and the token estimate."""
    messages = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        out = dict(m)
        calls = []
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                args = fn.get("arguments")
                calls.append(
                    {
                        "function": {
                            "name": fn.get("name", ""),
                            "arguments": args if isinstance(args, str) else json.dumps(args),
                        }
                    }
                )
        if calls:
            out["tool_calls"] = calls
        messages.append(out)
    return {"messages": messages, "tools": body.get("tools")}


def ollama_server(script: ScriptLike = None, **kw: Any) -> OllamaServer:
    """``with ollama_server({...}) as srv:`` — a server started on entering, stopped on exit."""
    return OllamaServer(script, **kw)


def main(argv: list[str] | None = None) -> int:
    return serve_main(OllamaServer, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
