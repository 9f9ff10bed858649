"""The limits of a run (`--max-turns`, `--max-time`) and what hitting one means, for every handler.

nex's own loop and the claude/codex wrappers check the same limits the same way: a turn limit is
checked before each model request, the time limit is a deadline around the whole message, and
either one ends the message with `LimitReached` (exit 3). The run then asks for one summary with
`summary_prompt`, without tools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from nexpy.errors import LimitReached

CONTINUE_HINT = "continue with --chat"
SUMMARY_REQUEST = (
    "[nex] The run reached its {what} limit. Do not call any tool. Summarize what you did, "
    "what is left to do, and how to continue."
)
# LimitReached.reason -> the word the summary request uses for it.
_LIMIT_WORDS = {"max_turns": "turn", "max_time": "time", "loop": "repeated-call"}
LOOP_NUDGE_AT = 3  # the same call this many times in a row: a nudge in its result
LOOP_STOP_AT = 4  # ... and this many: the run ends (LimitReached "loop", exit 3)
LOOP_NUDGE = (
    "[nex] You made the same {name} call with the same arguments {n} times in a row. Its "
    "result will not change: "
    "try something different (other arguments, another tool), or answer without a tool. "
    "Repeating it once more ends the run."
)


def summary_prompt(reason: str) -> str:
    """The user message asking for a wrap-up after the limit `reason` was hit."""
    return SUMMARY_REQUEST.format(what=_LIMIT_WORDS.get(reason, reason))


def turn_limit(limit: int | None, *, who: str = "the run") -> LimitReached:
    """The error of a turn limit: ours (`limit`), or one a wrapped CLI stopped at by itself."""
    return LimitReached(
        f"turn limit of {limit} reached" if limit else f"{who} hit its turn limit",
        reason="max_turns",
        hint=f"raise --max-turns or {CONTINUE_HINT}",
    )


def output_limit() -> LimitReached:
    """The end of an autonomous run whose final answer stopped at the output limit (exit 3)."""
    return LimitReached(
        "the final answer stopped at the output limit (max_tokens)",
        reason="output_limit",
        hint=f"raise max_tokens in the model's settings or {CONTINUE_HINT}",
    )


class LoopGuard:
    """Counts identical tool calls (same name, same arguments) in a row: small models stuck in a
    loop repeat a call whose result cannot change, and burn turns until a limit stops them."""

    def __init__(self) -> None:
        self._last: tuple[str, str] | None = None
        self._count = 0

    def see(self, name: str, arguments: str) -> str:
        """Count one call (`arguments` canonical, e.g. sorted-key JSON); return the nudge to
        fold into its result ("" for none). Raises LimitReached on the call that ends the run."""
        key = (name, arguments)
        self._count = self._count + 1 if key == self._last else 1
        self._last = key
        if self._count >= LOOP_STOP_AT:
            raise LimitReached(
                f"the model repeated the same {name} call {self._count} times in a row",
                reason="loop",
                hint="rephrase the task, try a stronger model, or continue with --chat",
            )
        if self._count >= LOOP_NUDGE_AT:
            return LOOP_NUDGE.format(n=self._count, name=name)
        return ""


@dataclass(frozen=True)
class Limits:
    max_turns: int | None = None
    max_time: float | None = None

    def check_turns(self, turns: int) -> None:
        """Raise LimitReached if `turns` model requests already used up the turn limit."""
        if self.max_turns is not None and turns >= self.max_turns:
            raise turn_limit(self.max_turns)

    @asynccontextmanager
    async def deadline(self, started: float) -> AsyncIterator[None]:
        """Inside, the time left of `max_time` (counted from `started`, a `time.monotonic()`)
        bounds the work; running out raises LimitReached. Other timeouts pass through."""
        if self.max_time is None:
            yield
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, self.max_time - (time.monotonic() - started))
        try:
            async with asyncio.timeout_at(at):
                yield
        except TimeoutError:
            if loop.time() < at:
                raise  # someone else's timeout
            raise LimitReached(
                f"time limit of {self.max_time:g} s reached",
                reason="max_time",
                hint=f"raise --max-time or {CONTINUE_HINT}",
            ) from None
