"""A scripted OpenAI-compatible chat server (plain + SSE, tool calls, llama.cpp's quirks).

Command line::

    python -m stubs.oai --port 0 --script FILE [--strict] [--window N] [--record FILE]
                        [--host 127.0.0.1]

binds, prints exactly one line ``http://HOST:PORT/v1`` to stdout, and serves until SIGTERM or
SIGINT. In-process::

    with stub_server({"replies": [{"content": "hi"}]}, strict=True) as srv:
        httpx.post(srv.url + "/chat/completions", json=...)
        srv.requests, srv.rejections

Endpoints: ``POST /v1/chat/completions`` (and ``/chat/completions``), ``GET /v1/models``,
``GET /props`` (llama.cpp; 404 unless a window is set), ``GET /health``, ``GET /_stub/requests``,
``GET /_stub/arrivals`` (``time.time()`` of each chat request's arrival, for benchmarks that
time a client from outside), ``GET /_stub/rejections``; in template mode ``GET /_stub/prompts``
(each request rendered) and ``GET /_stub/answers`` (the assistant message that answered it;
null for a fault). The script format is described in ``stubs/script.py``.

Strict mode answers what a strict chat template rejects (``stubs.strict.validate``) with
llama.cpp's 400 body; a window answers an oversized prompt with the C++ llama-server's
``exceed_context_size_error``. Never imports ``nexpy``: a stub is an independent peer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from stubs.script import Script
from stubs.server import ScriptedServer, ScriptLike, serve_main
from stubs.strict import validate
from stubs.template import TemplateRefusal, TemplateRenderer, vllm_error

__all__ = ["Script", "StubServer", "count_tokens", "estimate_prompt_tokens", "main", "stub_server"]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 and message['role'] != 'system' and message['role'] != 'user' %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

BARRIER_TIMEOUT = 120.0  # seconds a "barrier" reply waits for the rest before answering anyway

EXCEED_CONTEXT_MESSAGE = "the request exceeds the available context size, try increasing it"

NGINX_502 = (
    "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>{status} Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}

# ---------------------------------------------------------------------------------------------
# Token counting: tiktoken cl100k_base when its file is already cached locally, else len // 4.
# Never downloads: a stub must not touch the network.

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_encoder: Any = None
_encoder_loaded = False
_encoder_lock = threading.Lock()


def _get_encoder() -> Any:
    global _encoder, _encoder_loaded
    with _encoder_lock:
        if _encoder_loaded:
            return _encoder
        _encoder_loaded = True
        try:
            cache_dir = (
                os.environ.get("TIKTOKEN_CACHE_DIR")
                or os.environ.get("DATA_GYM_CACHE_DIR")
                or os.path.join(tempfile.gettempdir(), "data-gym-cache")
            )
            key = hashlib.sha1(_CL100K_URL.encode()).hexdigest()
            if cache_dir and os.path.isfile(os.path.join(cache_dir, key)):
                import tiktoken

                _encoder = tiktoken.get_encoding("cl100k_base")
        except Exception:
            _encoder = None
        return _encoder


def count_tokens(text: str) -> int:
    """Tokens in ``text``: cl100k_base if available offline, else ``len(text) // 4``."""
    if not text:
        return 0
    enc = _get_encoder()
    if enc is not None:
        try:
            return len(enc.encode(text, disallowed_special=()))
        except Exception:
            pass
    return len(text) // 4


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A rough prompt size: message text, tool call names and arguments, tool schemas, and
    4 tokens of overhead per message."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        parts.append(_content_text(msg.get("content")))
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    parts.append(str(fn.get("name") or ""))
                    args = fn.get("arguments")
                    parts.append(args if isinstance(args, str) else json.dumps(args))
    tools = body.get("tools")
    if tools:
        parts.append(json.dumps(tools))
    return count_tokens("\n".join(parts)) + 4 * len(messages)


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _content_text(msg.get("content"))
    return ""


def _within_max_tokens(text: str, body: Mapping[str, Any]) -> tuple[str, bool]:
    """`text` cut at about the request's max_tokens, as a real server stops writing there; and
    whether it was cut."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(limit, int) or limit <= 0 or len(text) <= limit:
        return text, False  # a token is at least a character: no need to count
    tokens = count_tokens(text)
    if tokens <= limit:
        return text, False
    return text[: len(text) * limit // tokens], True


def _split_words(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def _split_size(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# ---------------------------------------------------------------------------------------------
# The answer one reply makes.


class _Answer:
    """The assistant message a (non-fault) reply produces for one request."""

    def __init__(
        self, reply: Mapping[str, Any], body: Mapping[str, Any], next_id: Callable[[], str]
    ):
        self.content: str | None
        cut = False
        if reply.get("echo"):
            self.content, cut = _within_max_tokens("echo: " + _last_user_text(body), body)
        else:
            content = reply.get("content")
            self.content = None if content is None else str(content)
        self.reasoning: str | None = reply.get("reasoning")
        self.reasoning_field: str = reply.get("reasoning_field") or "reasoning_content"
        self.tool_calls: list[dict[str, Any]] = []
        for call in reply.get("tool_calls") or ():
            args = call.get("arguments", {})
            self.tool_calls.append(
                {
                    "id": call.get("id") or next_id(),
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
            )
        if self.content is None and not self.tool_calls:
            self.content = ""
        self.finish_reason: str = reply.get("finish_reason") or (
            "tool_calls" if self.tool_calls else "length" if cut else "stop"
        )
        usage = reply.get("usage")
        given: Mapping[str, Any] = usage if isinstance(usage, Mapping) else {}
        # Counting a long prompt costs more than serving it; a script that states both figures
        # skips it, so a benchmark of long sessions measures the client, not the stub.
        prompt = given.get("prompt_tokens")
        if prompt is None:
            prompt = estimate_prompt_tokens(body)
        completion = given.get("completion_tokens")
        if completion is None:
            completion = count_tokens(
                (self.content or "")
                + (self.reasoning or "")
                + "".join(
                    c["function"]["name"] + c["function"]["arguments"] for c in self.tool_calls
                )
            )
        self.usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            **given,
        }
        self.chunk_size: int | None = reply.get("chunk_size")

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg[self.reasoning_field] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    def _pieces(self, text: str) -> list[str]:
        if self.chunk_size and self.chunk_size > 0:
            return _split_size(text, self.chunk_size)
        return _split_words(text)

    def deltas(self) -> list[tuple[dict[str, Any], str | None]]:
        """The streamed (delta, finish_reason) sequence, role first, finish last."""
        out: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": ""}, None)
        ]
        if self.reasoning:
            field = self.reasoning_field
            out += [({field: p}, None) for p in self._pieces(self.reasoning)]
        if self.content:
            out += [({"content": p}, None) for p in self._pieces(self.content)]
        for i, call in enumerate(self.tool_calls):
            fn = call["function"]
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            out.append(({"tool_calls": [head]}, None))
            args = fn["arguments"]
            if self.chunk_size and self.chunk_size > 0:
                pieces = _split_size(args, self.chunk_size)
            else:
                third = max(1, -(-len(args) // 3))
                pieces = _split_size(args, third)
            out += [
                ({"tool_calls": [{"index": i, "function": {"arguments": p}}]}, None) for p in pieces
            ]
        out.append(({}, self.finish_reason))
        return out


def _error_body(status: int, message: str, type_: str | None = None) -> dict[str, Any]:
    if type_ is None:
        type_ = _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
    return {"error": {"code": status, "message": message, "type": type_}}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# The server.


class StubServer(ScriptedServer):
    """A scripted OpenAI chat server on its own event loop in a background thread."""

    url_path = "/v1"
    cli_module = "stubs.oai"
    cli_options = (
        ("--strict", {"action": "store_true", "help": "reject what strict templates reject"}),
        ("--window", {"type": int, "help": "context window in tokens (enables /props)"}),
        ("--record", {"help": "append each request body to this file as a JSON line"}),
        ("--template", {"help": "render each request with this chat template (.jinja), as vLLM"}),
    )

    def __init__(
        self,
        script: Script | Mapping[str, Any] | list[Any] | None = None,
        *,
        strict: bool = False,
        window: int | None = None,
        record: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        chat_template: str = DEFAULT_CHAT_TEMPLATE,
        framing: str = "chunked",
        template: str | Path | TemplateRenderer | None = None,
    ) -> None:
        super().__init__(script, record=record, host=host, port=port, framing=framing)
        self.strict = strict
        self.window = window  # read on every request: tests may change it at runtime
        # Template mode: every request rendered by transformers' engine (stubs/template.py).
        if template is not None and not isinstance(template, TemplateRenderer):
            template = TemplateRenderer.from_file(template)
        self.renderer = template
        self.prompts: list[str | None] = []  # the rendered prompt of each request (None: refused)
        self.answers: list[dict[str, Any] | None] = []  # the message that answered each of them
        self.chat_template = template.source if template is not None else chat_template
        self._rejections: list[tuple[int, str]] = []
        self._overflows: list[tuple[int, int]] = []
        # Requests held by a "barrier" reply, and the event that releases them together.
        self._barrier_waiting = 0
        self._barrier_release: asyncio.Event | None = None

    # -- public -------------------------------------------------------------------------------

    @property
    def rejections(self) -> list[tuple[int, str]]:
        """(request index, reason) for each strict-mode rejection (a copy)."""
        with self._lock:
            return list(self._rejections)

    @property
    def overflows(self) -> list[tuple[int, int]]:
        """(request index, n_prompt_tokens) for each context-window rejection (a copy)."""
        with self._lock:
            return list(self._overflows)

    def _routes(self, app: web.Application) -> None:
        chat = self._chat
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/chat/completions", chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_get("/health", self._health)
        app.router.add_get("/_stub/requests", self._stub_requests)
        app.router.add_get("/_stub/arrivals", self._stub_arrivals)
        app.router.add_get("/_stub/rejections", self._stub_rejections)
        app.router.add_get("/_stub/prompts", self._stub_prompts)
        app.router.add_get("/_stub/answers", self._stub_answers)

    # -- handlers -------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        entry: dict[str, Any] = {
            "id": self.script.model,
            "object": "model",
            "created": int(self._started),
            "owned_by": "stub",
        }
        window = self.window
        if window is not None:
            entry["meta"] = {"n_ctx": window, "n_ctx_train": window}
        return web.json_response({"object": "list", "data": [entry]})

    async def _props(self, request: web.Request) -> web.Response:
        window = self.window
        if window is None:
            return web.json_response(
                _error_body(404, "File Not Found", "not_found_error"), status=404
            )
        return web.json_response(
            {
                "default_generation_settings": {"n_ctx": window, "model": self.script.model},
                "total_slots": 1,
                "model_path": f"/models/{self.script.model}.gguf",
                "chat_template": self.chat_template,
                "build_info": "stub",
            }
        )

    async def _stub_rejections(self, request: web.Request) -> web.Response:
        return web.json_response([list(r) for r in self.rejections])

    async def _stub_prompts(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self.prompts))

    async def _stub_answers(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self.answers))

    def _render(self, index: int, body: Mapping[str, Any]) -> str | None:
        """Template mode: render ``body``, record the prompt; the refusal message, if any."""
        assert self.renderer is not None
        try:
            prompt: str | None = self.renderer.render(body)
            refusal = None
        except TemplateRefusal as e:
            prompt, refusal = None, str(e)
        with self._lock:
            self.prompts.append(prompt)
            self.answers.append(None)
            if refusal is not None:
                self._rejections.append((index, refusal))
        return refusal

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        parsed, body, index = await self._receive(request)
        if not parsed:
            return web.json_response(
                _error_body(400, "Failed to parse the request body as JSON"), status=400
            )
        if not isinstance(body, dict):
            return web.json_response(
                _error_body(400, "the request body must be a JSON object"), status=400
            )

        if self.strict:
            reason = validate(body.get("messages"))  # type: ignore[arg-type]
            if reason is not None:
                with self._lock:
                    self._rejections.append((index, reason))
                return web.json_response(_error_body(400, reason), status=400)

        if self.renderer is not None:
            refusal = self._render(index, body)
            if refusal is not None:
                return web.json_response(vllm_error(refusal), status=400)

        window = self.window
        if window is not None:
            n_prompt = estimate_prompt_tokens(body)
            if n_prompt > window:
                with self._lock:
                    self._overflows.append((index, n_prompt))
                err = _error_body(400, EXCEED_CONTEXT_MESSAGE, "exceed_context_size_error")
                err["error"]["n_prompt_tokens"] = n_prompt
                err["error"]["n_ctx"] = window
                return web.json_response(err, status=400)

        reply = self.script.next(_last_user_text(body))
        if reply.get("barrier"):
            await self._barrier(int(reply["barrier"]))
        delay = reply.get("delay")
        if delay:
            await asyncio.sleep(float(delay))
        stream = bool(body.get("stream"))
        fault = reply.get("fault")
        if fault is not None:
            return await self._fault(request, body, reply, fault, stream)
        answer = _Answer(reply, body, self._next_call_id)
        if self.renderer is not None:
            with self._lock:
                self.answers[len(self.prompts) - 1] = answer.message()
        if stream:
            return await self._stream(request, body, reply, answer)
        return await self._body(request, _dumps(self._completion(body, answer)))

    def _completion(self, body: Mapping[str, Any], answer: _Answer) -> dict[str, Any]:
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.script.model,
            "choices": [
                {"index": 0, "message": answer.message(), "finish_reason": answer.finish_reason}
            ],
            "usage": answer.usage,
        }

    def _chunks(self, body: Mapping[str, Any], answer: _Answer) -> list[bytes]:
        """Every SSE event of a streamed answer, ``[DONE]`` included."""
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = self.script.model

        def chunk(choices: list[Any], **extra: Any) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + _dumps(obj) + b"\n\n"

        events = [
            chunk([{"index": 0, "delta": delta, "finish_reason": finish}])
            for delta, finish in answer.deltas()
        ]
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            events.append(chunk([], usage=answer.usage))
        events.append(b"data: [DONE]\n\n")
        return events

    async def _stream(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        reply: Mapping[str, Any],
        answer: _Answer,
    ) -> web.StreamResponse:
        resp = await self._open_stream(request)
        events = self._chunks(body, answer)
        if reply.get("burst"):
            await resp.write(b"".join(events))
        else:
            await self._send(resp, events, float(reply.get("chunk_delay") or 0))
        await resp.write_eof()
        return resp

    async def _barrier(self, parties: int) -> None:
        """Hold until `parties` requests wait here, then let them all go at once (a benchmark
        starts N clients together this way). Released anyway after BARRIER_TIMEOUT, so a
        client that never arrives cannot hang the others."""
        if self._barrier_release is None:
            self._barrier_release = asyncio.Event()
        release = self._barrier_release
        self._barrier_waiting += 1
        if self._barrier_waiting >= parties:
            self._barrier_waiting = 0
            self._barrier_release = None
            release.set()
            return
        try:
            await asyncio.wait_for(release.wait(), BARRIER_TIMEOUT)
        except TimeoutError:
            if self._barrier_release is release:
                self._barrier_waiting -= 1

    async def _fault(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        reply: Mapping[str, Any],
        fault: str,
        stream: bool,
    ) -> web.StreamResponse:
        chunk_delay = float(reply.get("chunk_delay") or 0)
        after = int(reply.get("after_chunks") or 0)

        if fault == "status":
            status = int(reply.get("status") or 500)
            headers = {}
            if reply.get("retry_after") is not None:
                headers["Retry-After"] = str(reply["retry_after"])
            err = reply.get("body")
            if err is None:
                err = _error_body(status, f"stub fault: HTTP {status}")
            text = err if isinstance(err, str) else json.dumps(err)
            return web.Response(
                status=status, text=text, content_type="application/json", headers=headers
            )

        if fault == "restarted":
            # The server behind this kept-alive connection is gone (a restart, a proxy whose
            # backend restarted): the request gets no response at all.
            (self._abort if reply.get("reset") else self._cut)(request)
            return web.Response(status=204)

        if fault == "html":
            status = int(reply.get("status") or 502)
            page = reply.get("body")
            if not isinstance(page, str):
                page = NGINX_502.format(status=status)
            return web.Response(status=status, text=page, content_type="text/html")

        if fault == "hang":
            if stream and after:
                answer = _Answer(reply, body, self._next_call_id)
                resp = await self._open_stream(request)
                await self._send(resp, self._chunks(body, answer)[:after], chunk_delay)
            await self._hang(request)
            self._abort(request)
            return web.Response(status=204)

        if fault in ("drop", "cut"):
            cut = self._abort if fault == "drop" else self._cut
            answer = _Answer(reply, body, self._next_call_id)
            if stream:
                resp = await self._open_stream(request)
                await self._send(resp, self._chunks(body, answer)[:after], chunk_delay)
            else:
                data = _dumps(self._completion(body, answer))
                resp = await self._body(request, data, upto=len(data) // 2)
            cut(request)
            return resp

        if fault == "unfinished":
            # The whole answer but its end: no finish_reason and no [DONE] (the server process
            # died between the last token and the finish), yet the body itself ends properly.
            answer = _Answer(reply, body, self._next_call_id)
            if not stream:
                completion = self._completion(body, answer)
                completion["choices"][0]["finish_reason"] = None
                return await self._body(request, _dumps(completion))
            resp = await self._open_stream(request)
            events = [e for e in self._chunks(body, answer) if b'"finish_reason":null' in e]
            await self._send(resp, events, chunk_delay)
            await resp.write_eof()
            return resp

        if fault == "repeat":
            # A server stuck in a loop: the same content chunk forever, until the client leaves.
            answer = _Answer(reply, body, self._next_call_id)
            events = self._chunks(body, answer)
            resp = await self._open_stream(request)
            await resp.write(events[0])
            while not self._stopping_now(request):
                await resp.write(events[1])
                await asyncio.sleep(chunk_delay)
            return resp

        if fault == "event_error":
            resp = await self._open_stream(request)
            if after:
                answer = _Answer(reply, body, self._next_call_id)
                await self._send(resp, self._chunks(body, answer)[:after], chunk_delay)
            err = reply.get("body")
            if err is None:
                err = _error_body(500, "stub fault: an error event in the middle of a stream")
            payload = err.encode() if isinstance(err, str) else _dumps(err)
            await resp.write(b"event: error\ndata: " + payload + b"\n\n")
            await resp.write_eof()
            return resp

        if fault == "malformed":
            if stream:
                resp = await self._open_stream(request)
                answer = _Answer(reply, body, self._next_call_id)
                await self._send(resp, self._chunks(body, answer)[:after], chunk_delay)
                await resp.write(b"data: {not json\n\n")
                await resp.write_eof()
                return resp
            return web.Response(status=200, text="{not json", content_type="application/json")

        if fault == "empty":
            if stream:
                resp = await self._open_stream(request)
                await resp.write_eof()
                return resp
            return web.Response(status=200, body=b"", content_type="application/json")

        if fault == "stream_error":
            status = int(reply.get("status") or 500)
            err = reply.get("body")
            if err is None:
                err = _error_body(status, "stub fault: error in the middle of a stream")
            if not stream:
                text = err if isinstance(err, str) else json.dumps(err)
                return web.Response(status=status, text=text, content_type="application/json")
            resp = await self._open_stream(request)
            if after:
                answer = _Answer(reply, body, self._next_call_id)
                await self._send(resp, self._chunks(body, answer)[:after], chunk_delay)
            payload = err.encode() if isinstance(err, str) else _dumps(err)
            await resp.write(b"data: " + payload + b"\n\n")
            await resp.write_eof()
            return resp

        raise AssertionError(f"unhandled fault {fault!r}")  # Script rejects unknown faults


def stub_server(script: ScriptLike = None, **kw: Any) -> StubServer:
    """``with stub_server({...}, strict=True) as srv:`` — a server started on entering,
    stopped on exit."""
    return StubServer(script, **kw)


def main(argv: list[str] | None = None) -> int:
    return serve_main(StubServer, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
