"""What a model answers, and how one answer is read from a stream across retries.

`Reply` is a complete answer; `Model` is what the agent loop needs from a model. `ReplyReader`
accumulates one attempt's chunks (native tool calls, and calls a model wrote as text, recovered
only for offered tools); `Dedup` forwards streamed text so a retried attempt never shows again
what an earlier one already showed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexpy.errors import ProviderError, TransientError
from nexpy.toolcalls import TextCallExtractor, ToolCallAssembler, field_of, tool_parameters

TextCallback = Callable[[str], None]


@dataclass
class Reply:
    """One complete model answer."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    calls_from_text: bool = False  # the calls were written as text and recovered by nex


class Model(Protocol):
    """What the agent loop needs from a model: a complete answer, text streamed as it comes."""

    name: str

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply: ...


class EmptyReply(TransientError):
    """A 200 stream that carried no answer: retried once without streaming, which makes
    llama-cpp-python show the real error (a chat-template failure streams as nothing)."""


# -- reading a reply ------------------------------------------------------------------------
class Dedup:
    """Forwards streamed text, never showing again what an earlier attempt already showed.

    A retry that repeats the shown text stays silent until it passes it. One that diverges
    (a sampling model rarely repeats itself) cannot unshow the old text, so it says so once
    and shows its own answer from the start; the journal keeps only the last attempt's text.
    Each piece costs its own length, not the answer's: a long stream stays linear.
    """

    RESTART = "\n[nex: the retried answer differs; it starts again here]\n"

    def __init__(self, sink: TextCallback) -> None:
        self.sink = sink
        self.shown: list[str] = []  # what the user has seen, in pieces
        self.shown_len = 0
        self.attempt: list[str] = []  # this attempt's text, in pieces
        self.attempt_len = 0

    def new_attempt(self) -> None:
        self.attempt, self.attempt_len = [], 0

    def __call__(self, piece: str) -> None:
        if not piece:
            return
        start = self.attempt_len
        self.attempt.append(piece)
        self.attempt_len += len(piece)
        if start >= self.shown_len:  # past what was shown: the common case, every first attempt
            self._show(piece)
            return
        shown = "".join(self.shown)
        self.shown = [shown]
        overlap = shown[start : start + len(piece)]
        if piece.startswith(overlap):  # still repeating what was shown
            self._show(piece[len(overlap) :])
        else:
            text = "".join(self.attempt)
            self.shown, self.shown_len = [text], len(text)
            self.sink(self.RESTART + text)

    def _show(self, fresh: str) -> None:
        if fresh:
            self.shown.append(fresh)
            self.shown_len += len(fresh)
            self.sink(fresh)


class ReplyReader:
    """Accumulates one reply from stream chunks (or one non-streamed response)."""

    def __init__(self, tools: list[dict[str, Any]] | None, on_text: TextCallback) -> None:
        self.on_text = on_text
        self.native = ToolCallAssembler()
        # Calls written as text are only recovered when tools were offered, and only by name.
        self.text_calls = TextCallExtractor(tool_parameters(tools)) if tools else None
        self.raw: list[str] = []
        self.usage: dict[str, int] | None = None
        self.finish: str | None = None
        self.answered = False  # the server sent a delta or usage of its own

    def add(self, chunk: Any) -> None:
        u = field_of(chunk, "usage")
        if u is not None and field_of(u, "prompt_tokens") is not None:
            self.answered = True
            self.usage = {
                "prompt_tokens": int(field_of(u, "prompt_tokens") or 0),
                "completion_tokens": int(field_of(u, "completion_tokens") or 0),
            }
            # The part of the prompt the server had cached (llama.cpp's timings.cache_n, OpenAI
            # and vLLM's prefix cache): the rest is what it processed, the wait a user feels.
            cached = field_of(field_of(u, "prompt_tokens_details"), "cached_tokens")
            if isinstance(cached, int):
                self.usage["cached_tokens"] = cached
                self.usage["processed_tokens"] = max(0, self.usage["prompt_tokens"] - cached)
        for choice in field_of(chunk, "choices") or []:
            delta = field_of(choice, "delta") or field_of(choice, "message")
            piece = field_of(delta, "content")
            calls = field_of(delta, "tool_calls") or []
            if piece is not None or calls or field_of(delta, "role"):
                self.answered = True
            if piece:
                self.raw.append(piece)
                self.on_text(self.text_calls.feed(piece) if self.text_calls else piece)
            for call in calls:
                self.native.add(call)
            self.finish = field_of(choice, "finish_reason") or self.finish

    def reply(self, where: str, content_type: str) -> Reply:
        if not self.answered:
            raise empty_reply_error(where, content_type)
        content = "".join(self.raw)
        calls = self.native.finish()
        from_text = False
        if self.text_calls is not None:
            self.on_text(self.text_calls.finish())
            content = self.text_calls.visible
            if not calls and self.text_calls.calls:
                calls, from_text = self.text_calls.calls, True
                content = content.strip()
        return Reply(content, calls, self.usage, self.finish, calls_from_text=from_text)


def empty_reply_error(where: str, content_type: str) -> ProviderError:
    """The error for a 200 reply without an answer, by what the server said it sent."""
    ctype = content_type.split(";")[0].strip().lower()
    if "html" in ctype:
        return ProviderError(
            f"{where} answered with an HTML page, not a chat stream",
            hint="check that -e is the model server's API URL (…/v1), not a web UI or proxy",
        )
    if ctype and ctype not in ("text/event-stream", "application/x-ndjson"):
        return ProviderError(
            f"{where} answered 200 with a body that is not a chat completion stream "
            f"(Content-Type: {ctype})",
            hint="check that -e is an OpenAI-compatible chat API URL (…/v1)",
        )
    return EmptyReply(
        f"empty reply from {where}",
        hint="the server answered 200 with no data; check its log (a chat-template error?)",
    )
