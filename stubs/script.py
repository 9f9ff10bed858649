"""A stub's script: the replies it gives, in order, then a default.

A script is a JSON object (file or dict)::

    {"model": "stub-model",
     "replies": [{"content": "Hello"}, {"echo": true}, {"fault": "status", "status": 429}],
     "default": {"echo": true},
     "when_asked": {"Summarize": {"content": "a summary"}}}

or just the list of replies. Each chat request consumes one reply; once they run out every
request gets ``default``. ``when_asked`` maps a text to a reply given, consuming nothing, to
every request whose last user message contains that text (a summary request, which the client
sends when it chooses). Keys are checked when the script is built, so a typo fails the test
that wrote it instead of silently answering something else. Never imports ``nexpy``.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FAULTS", "REPLY_KEYS", "Script"]

FAULTS = (
    "status",  # an HTTP error status (or a 200) with a scripted body
    "hang",  # no reply, or stop mid-stream after `after_chunks`, until the client gives up
    "drop",  # reset the connection (RST) mid-answer: after `after_chunks`, or half a body
    "cut",  # close the connection cleanly (FIN) mid-answer, the same places as drop
    "unfinished",  # the whole answer but its finish (no finish_reason/[DONE], no done: true)
    "repeat",  # stream the first content chunk over and over until the client goes away
    "malformed",  # a garbled event (or a body that is not JSON)
    "empty",  # a 200 with nothing in it
    "html",  # an HTML error page, as a proxy sends
    "stream_error",  # an error object in the stream (a 200 body unstreamed if status: 200)
    "event_error",  # an SSE `event: error` after `after_chunks` (vLLM, some proxies)
    "restarted",  # no response: the connection closed (FIN; RST with `reset`), as one kept alive
    # from before a server restart looks when a request arrives on it
)

REPLY_KEYS = frozenset(
    {
        "content",  # the answer text
        "echo",  # answer "echo: <text of the last user message>"
        "reasoning",  # the model's thinking, streamed before the content
        # the field it goes in: "reasoning_content" (llama.cpp, vLLM; the default) or
        # "reasoning" (OpenRouter); inline <think> tags are just content (chunk_size splits them)
        "reasoning_field",
        "tool_calls",  # [{"name", "arguments" (dict or raw string), "id"?}]
        "finish_reason",  # override the finish reason ("length", ...)
        "usage",  # override (merged into) the usage object
        "delay",  # seconds to wait before sending headers
        "chunk_delay",  # seconds between streamed chunks
        "chunk_size",  # characters per streamed piece (default: per word)
        "burst",  # stream every event in one write, as fast as the socket takes it (bench)
        "fault",  # one of FAULTS
        "status",  # HTTP status for fault status/html
        "retry_after",  # Retry-After header for fault status
        "body",  # error body for fault status/html/stream_error (dict or str)
        "after_chunks",  # chunks sent before fault drop/hang
        "reset",  # fault restarted: reset the connection (RST) instead of closing it (FIN)
        "barrier",  # hold until this many barrier requests are waiting, then answer all (bench)
    }
)

SCRIPT_KEYS = frozenset({"model", "replies", "default", "when_asked"})


def _check_reply(reply: Any, where: str) -> dict[str, Any]:
    if not isinstance(reply, Mapping):
        raise ValueError(f"{where}: a reply must be an object, got {type(reply).__name__}")
    unknown = set(reply) - REPLY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown reply key(s) {sorted(unknown)}")
    fault = reply.get("fault")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"{where}: unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    field = reply.get("reasoning_field")
    if field is not None and field not in ("reasoning_content", "reasoning"):
        raise ValueError(f"{where}: reasoning_field must be reasoning_content or reasoning")
    barrier = reply.get("barrier")
    if barrier is not None and (not isinstance(barrier, int) or barrier < 1):
        raise ValueError(f"{where}: barrier must be a positive whole number")
    calls = reply.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list) or not calls:
            raise ValueError(f"{where}: tool_calls must be a non-empty list")
        for k, call in enumerate(calls):
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise ValueError(f"{where}: tool_calls[{k}] needs a string 'name'")
            extra = set(call) - {"name", "arguments", "id"}
            if extra:
                raise ValueError(f"{where}: tool_calls[{k}] unknown key(s) {sorted(extra)}")
    return dict(reply)


class Script:
    """An ordered list of replies plus a default; consuming is thread-safe."""

    def __init__(
        self,
        replies: Iterable[Mapping[str, Any]] = (),
        *,
        model: str = "stub-model",
        default: Mapping[str, Any] | None = None,
        when_asked: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.when_asked = {
            text: _check_reply(reply, f"when_asked[{text!r}]")
            for text, reply in (when_asked or {}).items()
        }
        self._replies = [_check_reply(r, f"replies[{i}]") for i, r in enumerate(replies)]
        self.default = _check_reply(default if default is not None else {"echo": True}, "default")
        self._cursor = 0
        self._lock = threading.Lock()

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any] | list[Any] | None) -> Script:
        """Build from a parsed script: an object with replies/model/default, or a reply list."""
        if obj is None:
            return cls()
        if isinstance(obj, list):
            return cls(obj)
        if not isinstance(obj, Mapping):
            raise ValueError(f"a script must be an object or a list, got {type(obj).__name__}")
        unknown = set(obj) - SCRIPT_KEYS
        if unknown:
            raise ValueError(f"unknown script key(s) {sorted(unknown)}")
        return cls(
            obj.get("replies") or (),
            model=obj.get("model") or "stub-model",
            default=obj.get("default"),
            when_asked=obj.get("when_asked"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read a JSON script file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_obj(json.load(f))

    def next(self, asked: str = "") -> dict[str, Any]:
        """Consume and return (a copy of) the next reply, or the default once they run out.

        `asked` is the request's last user message: one that contains a `when_asked` text
        gets that reply instead, consuming nothing."""
        with self._lock:
            reply: dict[str, Any]
            matched = [r for t, r in self.when_asked.items() if t in asked]
            if matched:
                reply = matched[0]
            elif self._cursor < len(self._replies):
                reply = self._replies[self._cursor]
                self._cursor += 1
            else:
                reply = self.default
            return copy.deepcopy(reply)

    def add(self, *replies: Mapping[str, Any]) -> None:
        """Append replies at runtime (after the ones already queued)."""
        with self._lock:
            start = len(self._replies)
            self._replies.extend(
                _check_reply(r, f"replies[{start + i}]") for i, r in enumerate(replies)
            )

    @property
    def consumed(self) -> int:
        """How many scripted replies have been used."""
        with self._lock:
            return self._cursor

    @property
    def remaining(self) -> int:
        """How many scripted replies are left before the default takes over."""
        with self._lock:
            return len(self._replies) - self._cursor
