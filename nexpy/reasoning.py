"""A reasoning model's thinking: read apart from its answer, and sent back only where it is read.

Servers send the thinking three ways: a ``reasoning_content`` field (llama.cpp
``--reasoning-format``, vLLM's reasoning parsers), ``reasoning`` (OpenRouter), or inline in the
content between ``<think>`` and ``</think>`` (a server that parses nothing). litellm 1.106.2,
measured against a socket stub: a streamed ``reasoning`` delta arrives as ``reasoning_content``
too (``hosted_vllm/``, ``openai/``, ``openrouter/``); an unstreamed body has any inline think
moved into ``message.reasoning_content`` already; a streamed inline think arrives as plain
content, tags split anywhere across chunks — ``ThinkSplitter``'s job.

Streamed thinking reaches the same text callback as the answer, marked as a `Thought` (a
``str``), so a sink that shows only answers skips it and every other signature stays as it is.

History: the thinking is journaled on its assistant message as ``reasoning_content`` and sent
back only to a model whose chat template reads it (`keeps_reasoning`); any other template drops
it anyway, so it costs nothing but tokens to send. The choice is the model's, never the turn's:
a conversation's earlier turns are sent the same bytes every time.
"""

from __future__ import annotations

import re
from typing import Any

OPEN, CLOSE = "<think>", "</think>"
FIELD = "reasoning_content"  # on an assistant message, in the journal and on the wire


class Thought(str):
    """A streamed piece of the model's thinking (not of its answer)."""

    __slots__ = ()


def delta_reasoning(delta: Any, field_of: Any) -> str | None:
    """The thinking a delta or message carries: ``reasoning_content``, else ``reasoning``
    (litellm sets both on an OpenRouter delta: one is read, never the two)."""
    text = field_of(delta, FIELD)
    if text is None:
        text = field_of(delta, "reasoning")
    return text if isinstance(text, str) else None


class ThinkSplitter:
    """Splits streamed content into thinking and answer at ``<think>``/``</think>``.

    Only the answer's opening think counts: ``<think>`` before any answer text, and a bare
    ``</think>`` with no ``<think>`` before it — a template that opens the think in its
    generation prompt (Qwen3, the R1 distills) streams only the close. Everything before such a
    close was thinking; it may already have been streamed as answer, so `answer` and `thought`
    (read after `finish`) are the corrected whole. A tag split across chunks is held back until
    it is whole or cannot be one. `inside=True` starts in a think, for a model known to stream
    that way; if no close comes, it was all answer.
    """

    def __init__(self, *, inside: bool = False) -> None:
        self.inside = inside
        self.started_inside = inside
        self.tags = 0  # tags seen: after the first think is over, tags are answer text
        self.answer: list[str] = []
        self.thought: list[str] = []
        self.bare_close = False  # a </think> without its <think>: the start was thinking
        self._held = ""
        self._strip = False  # the answer's whitespace right after </think> is not shown
        self._tail = ""  # the answer's end, and whether it ever wrote "<think>" (as text)
        self._answering = False  # answer text other than whitespace has come

    def feed(self, piece: str) -> list[str]:
        """The pieces to show for `piece`: answer text as ``str``, thinking as `Thought`."""
        text = self._held + piece
        self._held = ""
        out: list[str] = []
        while text:
            tags = self._wanted()
            if not tags or "<" not in text:  # no tag, nor the start of one: the common case
                self._emit(out, text)
                break
            hits = [(at, tag) for tag in tags if (at := text.find(tag)) != -1]
            # A think opens only before any answer text (a "<think>" later is just text), and
            # a close is bare only if the answer never wrote "<think>" (else it is its pair).
            hits = [
                (at, tag)
                for at, tag in hits
                if (tag == OPEN and not text[:at].strip())
                or (tag == CLOSE and (self.inside or OPEN not in self._tail + text[:at]))
            ]
            if not hits:
                keep = max((_partial_suffix(text, tag) for tag in tags), default=0)
                self._emit(out, text[: len(text) - keep])
                self._held = text[len(text) - keep :]
                break
            at, tag = min(hits)
            self._emit(out, text[:at])
            text = text[at + len(tag) :]
            self.tags += 1
            if tag == OPEN:
                self.answer = []  # only whitespace came before it
            elif not self.inside:  # a bare close: all before it was thought
                self.bare_close = True
                self.thought[:0] = self.answer
                self.answer, self._answering = [], False
            self.inside = tag == OPEN
            self._strip = not self.inside
        return out

    def finish(self) -> list[str]:
        """Flush a held partial tag; settle a think that never closed."""
        out: list[str] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        if self.started_inside and self.tags == 0:
            # Started inside a think that never closed: the model did not think, it answered.
            self.answer, self.thought = self.thought, []
            out = [str(p) for p in out]
        return out

    def _wanted(self) -> tuple[str, ...]:
        if self.inside:
            return (CLOSE,)
        if self.tags:
            return ()
        # Before any answer text a think may open; a bare close may come at any point.
        return (CLOSE,) if self._answering else (OPEN, CLOSE)

    def _emit(self, out: list[str], text: str) -> None:
        if self._strip and not self.inside:
            text = text.lstrip()
            if not text:
                return
            self._strip = False
        if not text:
            return
        if self.inside:
            self.thought.append(text)
            out.append(Thought(text))
        else:
            self.answer.append(text)
            out.append(text)
            self._answering = self._answering or bool(text.strip())
            if self._tail != OPEN:
                seen = self._tail + text
                self._tail = OPEN if OPEN in seen else seen[-(len(OPEN) - 1) :]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that starts `tag` (0 if none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


# -- history -----------------------------------------------------------------------------------

# Model names whose chat template reads an assistant turn's thinking back (``reasoning_content``,
# or ``thinking``/``reasoning``, which llama.cpp fills from it), as measured on the templates
# llama.cpp vendors (tests/unit/test_reasoning.py checks every one). A name not here: dropped.
READS_REASONING = re.compile(
    r"""
    gpt-oss | kimi-k2-thinking | kimi-k3 | minimax-m[23] | deepseek-v3\.2 | deepseek-v4
    | qwen3(?![-_.]?coder) | glm-4\.[67] | nemotron-3 | gemma-?4 | seed-oss | apriel-1\.6
    | bielik | command-r7b | cohere2moe | command-a-reasoning | reka-edge | spark | step-?fun
    | step-?3 | ling-3 | glimmer | minicpm5 | laguna | hy3 | lfm2\.5-8b | solar-open
    """,
    re.IGNORECASE | re.VERBOSE,
)

# What reading it looks like in a template's source (`nex doctor` applies it to /props).
_TEMPLATE_READS = re.compile(
    r"reasoning_content|\b(?:message|msg)\s*(?:\.\s*(?:thinking|reasoning)\b"
    r"|\[\s*['\"](?:thinking|reasoning)['\"]\s*\])"
)


def keeps_reasoning(model: str) -> bool:
    """Whether `model`'s chat template reads an assistant turn's thinking (by its name)."""
    return READS_REASONING.search(model) is not None


def template_reads_reasoning(template: str) -> bool:
    """Whether a chat template's source reads an assistant turn's thinking."""
    return _TEMPLATE_READS.search(template) is not None


def for_history(messages: list[dict[str, Any]], keep: bool) -> list[dict[str, Any]]:
    """`messages` as sent: the thinking kept on assistant turns, or left out (a new list only
    when something is left out; the messages themselves are never changed)."""
    if keep or not any(FIELD in m for m in messages):
        return messages
    return [_without(m) if FIELD in m else m for m in messages]


def _without(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != FIELD}


def tokens(chars: int) -> int:
    """A rough token count of `chars` characters of thinking (4 a token), for a progress line."""
    return (chars + 3) // 4
