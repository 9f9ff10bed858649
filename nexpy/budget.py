"""Tokens and the context window: how much of the model's window a request uses.

Counting uses tiktoken's cl100k encoding offline (the files litellm ships), cached per message
content so a turn costs work proportional to what is new.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from nexpy.provider import prepare_environment

DEFAULT_WINDOW = 8192
WARN_AT = 0.80  # fraction of the window at which the model is told to be brief
PER_MESSAGE = 4  # role and separators, as OpenAI's cookbook counts them


class TokenCounter:
    """Counts message tokens with a bounded per-content cache."""

    def __init__(self, cache_size: int = 20_000) -> None:
        self._encoding: Any = None
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def _encode_len(self, text: str) -> int:
        if self._encoding is None:
            prepare_environment()
            try:
                import tiktoken

                self._encoding = tiktoken.get_encoding("cl100k_base")
            except Exception:
                self._encoding = False  # offline with no bundled files: estimate
        if self._encoding is False:
            return len(text) // 4 + 1
        return len(self._encoding.encode(text, disallowed_special=()))

    def text(self, text: str) -> int:
        cached = self._cache.get(text)
        if cached is None:
            cached = self._encode_len(text)
            self._cache[text] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return cached

    def message(self, message: dict[str, Any]) -> int:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        n = PER_MESSAGE + self.text(content or "")
        for call in message.get("tool_calls") or []:
            fn = call.get("function", {})
            n += self.text(fn.get("name", "")) + self.text(str(fn.get("arguments", "")))
        return n

    def messages(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> int:
        total = sum(self.message(m) for m in messages) + 3
        if tools:
            total += self.text(json.dumps(tools, sort_keys=True))
        return total


class Budget:
    """The window a run works within and the pressure a request puts on it."""

    def __init__(self, window: int | None, source: str = "default") -> None:
        self.window = window or DEFAULT_WINDOW
        self.source = source if window else "default"
        self.counter = TokenCounter()

    @property
    def known(self) -> bool:
        return self.source != "default"

    def used(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
        return self.counter.messages(messages, tools)

    def reminder(self, used: int) -> str | None:
        """A note folded into the last user turn when the window is nearly full."""
        if used < WARN_AT * self.window:
            return None
        pct = round(100 * used / self.window)
        return (
            f"[nex: the context window is {pct}% full ({used} of {self.window} tokens); "
            "keep answers and tool output short]"
        )
