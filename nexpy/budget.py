"""Tokens and the context window: what a request costs and how much of the window it may take.

`TokenCounter` counts with tiktoken's cl100k encoding offline (the files litellm ships), cached
per text. `RequestBuilder` normalizes and counts only the part of the history that is new since
the last request, so turn 1000 costs about what turn 10 does. `Budget` turns a window into the
number of prompt tokens a request may carry:

    window − reserved output (max_tokens, at most a quarter of the window) − safety margin

and the system prompt and tool schemas come out of that before any history does. How full the
room left for history is (the pressure) decides the reminder folded into the last user turn and
when the compaction ladder (nexpy.compaction) runs. The count is an estimate in cl100k tokens;
the server's own `usage.prompt_tokens` corrects it (`Budget.observe`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from nexpy.messages import assistant, normalize, system, user
from nexpy.provider import prepare_environment

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
        """A note folded into the last user turn when the history room is nearly full."""
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


# Stands in for what lies beyond a segment's edge while it is normalized on its own. No
# conversation contains it, so a merge into it shows as a changed text.
_EDGE = "\x00nex: segment edge\x00"


class RequestBuilder:
    """The normalized request for a growing history, built with work proportional to what is new.

    `normalize` is one pass over the whole history, and a history grows by a few messages a
    turn. The builder keeps the normalized form of a settled prefix ("frozen") and its token
    count, and normalizes only the rest. A prefix settles at an edge where normalizing both
    sides apart gives what normalizing the whole gives: before a user message or before an
    assistant turn that follows tool results, when no turn merges across the edge (checked
    with stand-in turns on both sides of each segment), no tool message after the edge answers
    a call before it, and no system message comes after the start. Anything else (a late
    result, a system note mid-history) is normalized in one full pass. The history must only
    grow between builds; a replaced or shortened one (compaction, /clear) starts over.
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self._system_text: str | None = None
        self._reset(None, "")

    def _reset(self, history: list[dict[str, Any]] | None, system_text: str) -> None:
        self._history = history
        self._system_text = system_text
        self._system = normalize([system(system_text)])[0]
        self._system_tokens = self.counter.message(self._system)
        self._k = 0  # history[:k] is frozen
        self._last_raw: dict[str, Any] | None = None  # history[k - 1], to notice edits
        self._frozen: list[dict[str, Any]] = []
        self._frozen_tokens = 0
        self._frozen_last_user: int | None = None  # index into _frozen
        self._built: list[dict[str, Any]] | None = None
        self._built_last_user: int | None = None

    def system_tokens(self, system_text: str) -> int:
        """Tokens of the system message for `system_text`."""
        if system_text != self._system_text:
            return self.counter.message(normalize([system(system_text)])[0])
        return self._system_tokens

    def build(
        self, system_text: str, history: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """The normalized request for `[system, *history]` and its raw token count (no tools).

        The messages of the result are shared with later results: never mutate them.
        """
        k = self._k
        if (
            history is not self._history
            or system_text != self._system_text
            or len(history) < k
            or (k and history[k - 1] is not self._last_raw)
        ):
            self._reset(history, system_text)
        self._advance(history)
        tail = self._segment(history, self._k, len(history), closed=False)
        if tail is None:
            request = normalize([system(system_text), *history])
            tokens = self.counter.messages(request)
            last_user = _last_user(request, 0, len(request))
        else:
            request = [self._system, *self._frozen, *tail]
            tokens = (
                self._system_tokens
                + self._frozen_tokens
                + sum(self.counter.message(m) for m in tail)
                + PER_REQUEST
            )
            last_user = _last_user(request, len(request) - len(tail), len(request))
            if last_user is None and self._frozen_last_user is not None:
                last_user = self._frozen_last_user + 1
        self._built, self._built_last_user = request, last_user
        return request, tokens

    def fold(self, request: list[dict[str, Any]], notes: Sequence[str]) -> list[dict[str, Any]]:
        """`request` with `notes` folded into its last user turn, as `normalize` folds reminders.

        Only that one message is replaced (in the list, which is the caller's), so the shared
        messages stay untouched.
        """
        notes = [n for n in notes if n]
        if not notes:
            return request
        pos = self._built_last_user if request is self._built else None
        if pos is None:
            pos = _last_user(request, 0, len(request))
        if pos is None:
            return normalize(request, reminders=notes)
        request[pos] = normalize([request[pos]], reminders=notes)[1]
        return request

    def _advance(self, history: list[dict[str, Any]]) -> None:
        """Freeze up to the latest edge that settles, if there is a new one."""
        for j in range(len(history) - 1, self._k, -1):
            if _edge(history, j):
                break
        else:
            return
        segment = self._segment(history, self._k, j, closed=True)
        if segment is None:
            return
        last_user = _last_user(segment, 0, len(segment))
        if last_user is not None:
            self._frozen_last_user = len(self._frozen) + last_user
        self._frozen.extend(segment)
        self._frozen_tokens += sum(self.counter.message(m) for m in segment)
        self._k = j
        self._last_raw = history[j - 1]

    def _segment(
        self, history: list[dict[str, Any]], start: int, end: int, *, closed: bool
    ) -> list[dict[str, Any]] | None:
        """history[start:end] normalized as the whole would normalize it, or None if unsure.

        `closed`: the segment is followed by history[end], which opens a new segment.
        """
        part = history[start:end]
        if start and not part:
            return None
        calls: set[str] = set()
        for message in part:
            if not isinstance(message, dict):
                return None  # the full pass names the bad message
            role = message.get("role")
            if role == "assistant":
                for call in message.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("id"), str):
                        calls.add(call["id"])
            elif role == "tool":
                if message.get("tool_call_id") not in calls:
                    return None  # it may answer a call before the edge
            elif role != "user":
                return None  # system notes fold into the system message, far before the edge
        # A segment that starts on an assistant turn (one normalize keeps: see _edge) gets a
        # user turn before it standing for what precedes the edge, so no placeholder is invented.
        lead = bool(start) and part[0].get("role") != "user"
        messages = [self._system]
        if lead:
            messages.append(user(_EDGE))
        messages.extend(part)
        if closed:
            # Stands for what follows. An assistant turn: a plain assistant turn before it merges
            # into it, visibly, since a kept plain turn always has text of its own.
            messages.append(assistant(_EDGE))
        out = normalize(messages)[1:]
        if lead:
            if out[0].get("content") != _EDGE:
                return None
            out = out[1:]
        if closed:
            # normalize ends a request on a user turn: the stand-in is followed by "Continue.".
            if len(out) < 2 or out[-2].get("content") != _EDGE:
                return None  # a plain assistant turn would merge with the one after the edge
            out = out[:-2]
            if history[end].get("role") == "user" and (not out or out[-1]["role"] == "user"):
                return None  # a user turn would merge with the one after the edge
        return out


def _edge(history: list[dict[str, Any]], j: int) -> bool:
    """Whether a frozen prefix may end before history[j] (see RequestBuilder).

    Before a user message, or before an assistant message that follows tool results and that
    normalize surely keeps (text, or only well-formed calls): a dropped one would let what comes
    after it merge across the edge.
    """
    message = history[j]
    if not isinstance(message, dict):
        return False
    role = message.get("role")
    if role == "user":
        return True
    before = history[j - 1]
    if role != "assistant" or not isinstance(before, dict) or before.get("role") != "tool":
        return False
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        return True
    calls = message.get("tool_calls")
    return (
        isinstance(calls, list)
        and bool(calls)
        and all(
            isinstance(c, dict)
            and c.get("type") in (None, "function")
            and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str)
            and bool(c["function"]["name"])
            for c in calls
        )
    )


def _last_user(messages: list[dict[str, Any]], lo: int, hi: int) -> int | None:
    for i in range(hi - 1, lo - 1, -1):
        if messages[i].get("role") == "user":
            return i
    return None
