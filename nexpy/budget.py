"""Tokens and the context window: what a request costs and how much of the window it may take.

`TokenCounter` counts with tiktoken's cl100k encoding offline (the files litellm ships), cached
per text (nexpy.messages.RequestBuilder counts only what is new each turn, so turn 1000 costs about
what turn 10 does). `Budget` turns a window into the number of prompt tokens a request may carry:

    window − reserved output (max_tokens, at most a quarter of the window) − safety margin

and the system prompt and tool schemas come out of that before any history does. How full the
room left for history is (the pressure) decides the reminder appended to the newest message and
when the compaction ladder runs (the policy is nexpy.context's). The count is an estimate in
cl100k tokens; the server's own `usage.prompt_tokens` corrects it (`Budget.observe`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

from nexpy.litellm_setup import prepare_environment

DEFAULT_WINDOW = 8192
MIN_WINDOW = 512  # below this no system prompt and tool schemas fit; a smaller figure is a typo
DEFAULT_OUTPUT = 4096  # tokens reserved for the reply, capped at a quarter of the window
PER_MESSAGE = 4  # role and separators, as OpenAI's cookbook counts them
PER_CALL = 4  # a tool call's framing around its name and arguments (id, type, braces)
PER_REQUEST = 3  # the reply's priming tokens
WARN_AT = 0.75  # fill of the history room at which the model is told to be brief
REMINDER_TOKENS = 64  # what that reminder adds to a request, with room to spare
TARGET = 0.5  # compaction aims here, so the next turns fit without compacting again
# Chars per token when sizing text to a token budget: low on purpose, because code, logs and
# non-English text run denser than prose and an output sized too big costs a compaction.
CHARS_PER_TOKEN = 3
# The drift ratio (server tokens / our tokens) stays in this range: a wilder reading is a server
# that counts something else (cached prompts, images), not a tokenizer difference.
RATIO_RANGE = (0.5, 4.0)
OVERFLOW_SOURCE = "the server's overflow error"


class TokenCounter:
    """Counts message tokens with a bounded per-text cache."""

    def __init__(self, cache_size: int = 20_000) -> None:
        self._encoding: Any = None
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def load(self) -> None:
        """Load the encoding if not yet loaded: ~0.3 s of CPU once a process, which a caller on
        an event loop does in a thread (counting loads it on first use otherwise)."""
        if self._encoding is None:
            prepare_environment()
            try:
                import tiktoken

                self._encoding = tiktoken.get_encoding("cl100k_base")
            except Exception:
                self._encoding = False  # offline with no bundled files: estimate

    def _encode_len(self, text: str) -> int:
        if self._encoding is None:
            self.load()
        if self._encoding is False:
            return len(text) // 4 + 1
        return len(self._encoding.encode(text, disallowed_special=()))

    def text(self, text: str) -> int:
        """Tokens in `text`."""
        if not text:
            return 0
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
        """Tokens one message adds to a request: its text, its tool calls and the framing."""
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        n = PER_MESSAGE + self.text(content or "")
        for call in message.get("tool_calls") or []:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            n += PER_CALL + self.text(fn.get("name") or "")
            n += self.text(str(fn.get("arguments") or ""))
        return n

    def tools(self, tools: list[dict[str, Any]] | None) -> int:
        """Tokens the tool schemas add (the server renders them into the prompt)."""
        # In the order they go on the wire: sorting keys alone changes the count by ~4%.
        return self.text(json.dumps(tools)) if tools else 0

    def messages(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> int:
        """Tokens of a whole request."""
        return sum(self.message(m) for m in messages) + PER_REQUEST + self.tools(tools)


class Budget:
    """The window a run works within, what a request may carry, and how full a request is.

    `used` figures are corrected estimates (our count × the drift ratio); "raw" figures are our
    own count before that correction.
    """

    def __init__(
        self, window: int | None, source: str = "default", *, max_output: int | None = None
    ) -> None:
        self.counter = TokenCounter()
        self.ratio = 1.0
        self._max_output = max_output or DEFAULT_OUTPUT
        self.window = DEFAULT_WINDOW
        self.source = "default"
        if window:
            self.adopt(window, source)

    @property
    def known(self) -> bool:
        """Whether the window came from somewhere (a flag, the config, the server), not a guess."""
        return self.source != "default"

    def adopt(self, window: int, source: str) -> None:
        """Use `window` from now on; `source` says where it came from (shown to the person)."""
        self.window = max(MIN_WINDOW, int(window))
        self.source = source

    @property
    def max_output(self) -> int:
        """Tokens reserved for the reply; sent as max_tokens so the reply cannot overrun them."""
        return min(self._max_output, self.window // 4)

    @property
    def margin(self) -> int:
        """Slack for what our count cannot see: chat-template tokens, a tokenizer we lack."""
        return max(64, self.window // 25)

    @property
    def limit(self) -> int:
        """The most prompt tokens a request may carry."""
        return self.window - self.max_output - self.margin

    def estimate(self, raw: int) -> int:
        """Our count of a request, corrected by what the server's own counts taught us."""
        return math.ceil(raw * self.ratio)

    def fits(self, used: int) -> bool:
        return used <= self.limit

    def room(self, fixed_raw: int) -> int:
        """Raw tokens of history that fit beside `fixed_raw` (system prompt, tools, framing)."""
        return max(0, math.floor(self.limit / self.ratio) - fixed_raw)

    def fill(self, raw: int, fixed_raw: int) -> float:
        """How full the history room is: 0 empty, 1 exactly full, above 1 over budget."""
        room = self.room(fixed_raw)
        return (raw - fixed_raw) / room if room else math.inf

    def output_chars(self, fixed_raw: int, ceiling: int) -> int:
        """How many chars one tool output may keep: a third of the history room, at least 1000.

        A turn may run several tools, and an output that fills most of the room by itself
        leaves nothing for the task and the turns around it.
        """
        return max(1000, min(ceiling, self.room(fixed_raw) * CHARS_PER_TOKEN // 3))

    def reminder(self, raw: int, fixed_raw: int) -> str | None:
        """A note for the model when the history room is nearly full (nexpy.context appends it
        to the newest message, once between compactions)."""
        if self.fill(raw, fixed_raw) < WARN_AT:
            return None
        used = self.estimate(raw)
        pct = round(100 * used / self.window)
        return (
            f"[nex: the context window is {pct}% full ({used} of {self.window} tokens); keep "
            "answers and tool output short: older turns will soon be summarized]"
        )

    def observe(self, raw: int, prompt_tokens: int | None) -> None:
        """Learn from the server's count of a request we counted as `raw` tokens.

        A moving average, because a server's tokenizer differs from cl100k by a steady factor
        and one odd reading (a cached prompt reported as 0) should not swing the budget.
        """
        if not prompt_tokens or raw < 64:
            return  # too small a request to tell a ratio from the framing
        measured = prompt_tokens / raw
        low, high = RATIO_RANGE
        self.ratio = min(high, max(low, (self.ratio + measured) / 2))

    def overflowed(self, raw: int, n_ctx: int | None) -> str:
        """The server refused a request we counted as `raw` tokens; adjust, and say how.

        With `n_ctx` the server told us its window: adopt it. Our estimate said the request fit
        under `limit`, so the server counts more than we do: raise the ratio to the least that
        explains the refusal. Without a figure, an assumed window was too big (shrink it below
        what was sent) or, for a known one, our count is low.
        """
        if n_ctx:
            sent_output, changed = self.max_output, n_ctx != self.window
            self.adopt(n_ctx, OVERFLOW_SOURCE)
            # The server counted more than its window (less what it may hold back for the
            # reply): per token of ours, at least this many of its own.
            least = (n_ctx - sent_output) / max(raw, 1)
            if self.ratio < least:
                self.ratio = min(RATIO_RANGE[1], least * 1.05)
            elif not changed:
                self.ratio = min(RATIO_RANGE[1], self.ratio * 1.1)
            if changed:
                return f"the server's context window is {self.window} tokens; using that"
            return f"the server counts more tokens than estimated; correcting by {self.ratio:.2f}×"
        if not self.known or self.source == OVERFLOW_SOURCE:
            self.adopt(self.estimate(raw) * 3 // 4, OVERFLOW_SOURCE)
            return (
                f"the request did not fit; assuming a context window of {self.window} tokens "
                "(set --context-window to the server's real figure)"
            )
        self.ratio = min(RATIO_RANGE[1], self.ratio * 1.25)
        return f"the server counts more tokens than estimated; correcting by {self.ratio:.2f}×"
