"""What a model answers, and how one answer is read from a stream across retries.

`Reply` is a complete answer; `Model` is what the agent loop needs from a model. `ReplyReader`
accumulates one attempt's chunks (native tool calls, and calls a model wrote as text, recovered
only for offered tools; the model's thinking apart from its answer, nexpy.reasoning); `Dedup`
forwards streamed text so a retried attempt never shows again what an earlier one already showed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexpy.errors import ProviderError, TransientError
from nexpy.reasoning import ThinkSplitter, Thought, delta_reasoning
from nexpy.toolcalls import TextCallExtractor, ToolCallAssembler, field_of, tool_parameters

# Streamed pieces: the answer's as str, the model's thinking as nexpy.reasoning.Thought.
TextCallback = Callable[[str], None]


@dataclass
class Reply:
    """One complete model answer."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    calls_from_text: bool = False  # the calls were written as text and recovered by nex
    reasoning: str = ""  # the model's thinking, never part of `content`


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
    Each piece costs its own length, not the answer's: a long stream stays linear. Thinking
    (`Thought` pieces) and answer are compared each with its own kind, so a retry is matched
    part by part and a piece is never shown as the other kind.
    """

    RESTART = "\n[nex: the retried answer differs; it starts again here]\n"

    def __init__(self, sink: TextCallback) -> None:
        self.answer = _Track(sink, str)
        self.thought = _Track(sink, Thought)

    def new_attempt(self) -> None:
        self.answer.new_attempt()
        self.thought.new_attempt()

    def __call__(self, piece: str) -> None:
        (self.thought if isinstance(piece, Thought) else self.answer)(piece)


class _Track:
    """Dedup for one kind of text: what was shown of it, and this attempt's so far."""

    def __init__(self, sink: TextCallback, kind: Callable[[str], str]) -> None:
        self.sink = sink
        self.kind = kind
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
            self.sink(self.kind(Dedup.RESTART + text))

    def _show(self, fresh: str) -> None:
        if fresh:
            self.shown.append(fresh)
            self.shown_len += len(fresh)
            self.sink(self.kind(fresh))


class ReplyReader:
    """Accumulates one reply from stream chunks (or one non-streamed response)."""

    def __init__(
        self,
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        inside_think: bool = False,
    ) -> None:
        self.on_text = on_text
        self.native = ToolCallAssembler()
        # Calls written as text are only recovered when tools were offered, and only by name.
        self.parameters = tool_parameters(tools) if tools else None
        self.text_calls = TextCallExtractor(self.parameters) if self.parameters else None
        # Inline <think> in the content (a server that does not parse it); `inside_think`: the
        # model's template opens the think in the prompt, so its stream starts inside one.
        self.think = ThinkSplitter(inside=inside_think)
        self.thought: list[str] = []  # reasoning_content / reasoning fields
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
            thought = delta_reasoning(delta, field_of)
            calls = field_of(delta, "tool_calls") or []
            if piece is not None or thought is not None or calls or field_of(delta, "role"):
                self.answered = True  # a stream cut while thinking is a cut, not an empty reply
            if thought:
                self.thought.append(thought)
                self.on_text(Thought(thought))
            if piece:
                self._content(self.think.feed(piece))
            for call in calls:
                self.native.add(call)
            self.finish = field_of(choice, "finish_reason") or self.finish

    def _content(self, pieces: list[str]) -> None:
        for piece in pieces:
            if isinstance(piece, Thought):
                self.on_text(piece)
            else:
                self.raw.append(piece)
                self.on_text(self.text_calls.feed(piece) if self.text_calls else piece)

    def reply(self, where: str, content_type: str) -> Reply:
        if not self.answered:
            raise empty_reply_error(where, content_type)
        self._content(self.think.finish())
        text_calls = self.text_calls
        if self.think.bare_close or self.think.started_inside:
            # What was streamed as answer was (or was not) thinking after all: read the
            # corrected answer again, calls included.
            self.raw = list(self.think.answer)
            text_calls = TextCallExtractor(self.parameters) if self.parameters else None
            if text_calls is not None:
                text_calls.feed("".join(self.raw))
        content = "".join(self.raw)
        calls = self.native.finish()
        from_text = False
        if text_calls is not None:
            rest = text_calls.finish()
            if text_calls is self.text_calls:
                self.on_text(rest)
            content = text_calls.visible
            if not calls and text_calls.calls:
                calls, from_text = text_calls.calls, True
                content = content.strip()
        reasoning = "".join(self.thought) + "".join(self.think.thought)
        return Reply(
            content, calls, self.usage, self.finish, calls_from_text=from_text, reasoning=reasoning
        )


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
