"""Merge the text deltas of a chat-completion stream that reached us together.

A local server can stream tokens faster than litellm turns them into objects (about 400 µs a
chunk, pydantic all the way down: ~2,700 tokens/s on these machines). Whatever is already in
the socket buffer when we read it cannot be shown any sooner one event at a time, so an httpx
transport between litellm and the socket merges the consecutive text-only events of each read
into one event carrying their concatenated text. A slow server (one event per read) passes
through untouched: this never holds back an event that is complete, and never adds latency.

Only events that differ in nothing but their text are merged: same id, model and every other
field, one choice at index 0 whose delta is exactly one of `content`, `reasoning_content`,
`reasoning` (a string), no finish reason, no logprobs, no usage. Everything else (the role
chunk, tool-call deltas, the finish and usage chunks, `[DONE]`, comments, anything that is not
JSON) passes byte for byte, in order. A stream with CR line endings passes whole.

A one-line `data:` event that is neither JSON nor `[DONE]` raises json.JSONDecodeError: litellm's
OpenAI-compatible stream parser would drop it silently and the answer would end short.

A request that gets no response at all (the connection closed or reset before any byte of one)
is sent again once, at once, on a new connection: a connection kept in the pool is dead when the
server restarted between two turns (or a proxy's backend did), and it only shows when a request
is sent on it. Browsers and Go's net/http do the same; it is not a failed attempt for nex.

`coalescing_client()` hands litellm its HTTP client over this transport: one pool per event loop
and proxy, so connections last the session (`AsyncHTTPHandler(transport=…)` passed as `client=`
is the supported place for our own transport under litellm).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import httpx

from nexpy.integrity import check_body

TEXT_FIELDS = ("content", "reasoning_content", "reasoning")
_SEP = b"\n\n"
_PLAIN_CHOICE: dict[str, Any] = {"index": 0, "finish_reason": None}
# One JSON string literal, escapes and all (RFC 8259 §7); bytes ≥ 0x80 are UTF-8 text.
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_WS = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*")
_MARK = "\x00nex-coalesce\x00"
_MARK_LITERAL = json.dumps(_MARK).encode()


def _text_field(obj: Any) -> str | None:
    """The text field of a parsed event that carries nothing but text, else None."""
    if not isinstance(obj, dict) or obj.get("usage") is not None:
        return None
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    plain = {k: v for k, v in choice.items() if k != "delta" and (k != "logprobs" or v is not None)}
    delta = choice.get("delta")
    if plain != _PLAIN_CHOICE or not isinstance(delta, dict) or len(delta) != 1:
        return None
    ((name, text),) = delta.items()
    return name if name in TEXT_FIELDS and isinstance(text, str) else None


def _template(event: bytes) -> tuple[bytes, bytes, bytes] | None:
    """For a text-delta event: (the bytes before its text literal, the literal, the bytes after).
    Another event with the same bytes around a string literal differs only in its text."""
    if not event.startswith(b"data:") or b"\n" in event:
        return None
    payload = event[5:]
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError:
        if payload.strip() == b"[DONE]":
            return None
        raise  # a garbled stream: litellm would skip the event and end with half an answer
    field = _text_field(obj)
    if field is None:
        return None
    key = json.dumps(field).encode()
    at = event.find(key)
    while at >= 0:  # the key may appear elsewhere (inside an id, say): check each place
        colon = _WS.match(event, at + len(key))
        literal = _STRING.match(event, colon.end()) if colon else None
        if literal:
            head, tail = event[: literal.start()], event[literal.end() :]
            marked = json.loads((head + _MARK_LITERAL + tail)[5:])
            if marked["choices"][0]["delta"][field] == _MARK:
                return head, literal.group(), tail
        at = event.find(key, at + 1)
    return None


class _Run:
    """Consecutive text deltas that differ in nothing but their text."""

    def __init__(self, event: bytes, head: bytes, literal: bytes, tail: bytes) -> None:
        self.first = event
        self.head, self.tail = head, tail
        self.texts = [literal[1:-1]]  # each literal's inside: concatenated, still valid JSON

    def take(self, event: bytes) -> bool:
        head, tail = self.head, self.tail
        if not (event.startswith(head) and event.endswith(tail)):
            return False
        literal = event[len(head) : len(event) - len(tail)]
        if len(literal) < 2 or not _STRING.fullmatch(literal):
            return False
        self.texts.append(literal[1:-1])
        return True

    def encode(self) -> bytes:
        if len(self.texts) == 1:
            return self.first + _SEP
        return self.head + b'"' + b"".join(self.texts) + b'"' + self.tail + _SEP


def coalesce(block: bytes) -> bytes:
    """`block`: complete events, each ending in a blank line. The same events, each run of
    mergeable text deltas replaced by one."""
    out: list[bytes] = []
    run: _Run | None = None
    for event in block.split(_SEP)[:-1]:
        if run is not None and run.take(event):
            continue
        if run is not None:
            out.append(run.encode())
        template = _template(event)
        run = _Run(event, *template) if template else None
        if run is None:
            out.append(event + _SEP)
    if run is not None:
        out.append(run.encode())
    return b"".join(out)


class CoalescedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = b""
        passthrough = False
        async for data in self.inner:
            if passthrough:
                yield data
                continue
            pending += data
            if b"\r" in pending:  # CR or CRLF line endings: not worth parsing, pass it all
                passthrough = True
                yield pending
                pending = b""
                continue
            cut = pending.rfind(_SEP)
            if cut < 0:
                continue  # no event is complete yet: nothing a reader could act on either
            block, pending = pending[: cut + 2], pending[cut + 2 :]
            yield coalesce(block)
        if pending:
            yield pending

    async def aclose(self) -> None:
        await self.inner.aclose()


# What the transport raises for a connection that closed (FIN) or was reset (RST) before any
# response: h11's "Server disconnected without sending a response", or the socket's error.
_NO_RESPONSE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class CoalescingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; event-stream responses come back with their text deltas merged."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except _NO_RESPONSE:
            # httpcore dropped the dead connection; a new one is opened (see the module doc).
            response = await self.inner.handle_async_request(request)
        ctype = response.headers.get("content-type", "")
        if response.status_code == 200 and ctype.lower().startswith("application/json"):
            # A whole answer: litellm would take a cut one for finished (nexpy.integrity).
            await response.aread()
            check_body(response.content)
            return response
        if not ctype.lower().startswith("text/event-stream"):
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-length"]
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=CoalescedStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the client pool ---------------------------------------------------------------------------
_Key = tuple[asyncio.AbstractEventLoop, str | None]
_clients: dict[_Key, Any] = {}


@functools.lru_cache(maxsize=64)
def _proxy_for(endpoint: str | None) -> str | None:
    """The environment's proxy for `endpoint` (read once: 0.5 ms a look, every request)."""
    url = httpx.URL(endpoint or "http://127.0.0.1")
    if urllib.request.proxy_bypass(url.host):
        return None
    return urllib.request.getproxies().get(url.scheme)


def coalescing_client(endpoint: str | None) -> Any:
    """litellm's HTTP handler for the OpenAI-compatible routes, one per event loop (a pool that
    lasts the session), over a transport that merges text deltas which arrived together and
    rejects garbled events (above). The environment's proxy for `endpoint`, if any, is
    used as litellm's own client would."""
    proxy = _proxy_for(endpoint)
    loop = asyncio.get_running_loop()
    for key in [k for k in _clients if k[0].is_closed()]:
        del _clients[key]  # a finished loop's pool is of no use to anyone
    client = _clients.get((loop, proxy))
    if client is None:
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

        transport = CoalescingTransport(httpx.AsyncHTTPTransport(retries=0, proxy=proxy))
        client = _clients[(loop, proxy)] = AsyncHTTPHandler(transport=transport)
    return client
