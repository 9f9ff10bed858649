"""The protocol every handler implements: nex's own agent loop and the claude/codex wrappers.

The CLI, the REPL and the autonomous runner speak only this, so a user cannot tell from the
interface which handler runs, except by the model they chose.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nexpy.limits import Limits

if TYPE_CHECKING:
    from nexpy.events import Emitter
    from nexpy.plan import SpawnPlan
    from nexpy.session import Session

TextCallback = Callable[[str], None]
# (tool name, arguments, the diff it would make or "") -> True to run it; False, or the reason
# the person gave, to decline (nexpy.approval)
Confirm = Callable[[str, dict[str, Any], str], Awaitable[bool | str]]


@dataclass
class Totals:
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class HandlerOptions:
    """What a handler needs from the command line besides the plan."""

    workdir: Path
    max_turns: int | None = None
    max_time: float | None = None
    read_only: bool = False
    yes: bool = False
    system_prompt: str | None = None
    confirm: Confirm | None = None
    project_doc: bool = True  # read AGENTS.md / CLAUDE.md (nexpy.instructions)
    project_doc_max_tokens: int | None = None
    instructions: str = ""  # their text, set by the run (journaled once per session)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_turns, self.max_time)


class Handler(Protocol):
    totals: Totals
    context_used: int  # tokens of the last request (0 when the handler cannot tell)
    answer_cut: bool  # the last answer stopped at the output limit (finish_reason "length")

    @property
    def window(self) -> int | None: ...

    async def send(self, text: str, on_text: TextCallback | None = None) -> str:
        """One user message in; the final answer out. Raises NexError subclasses, LimitReached,
        or asyncio.CancelledError (Ctrl-C), leaving the session resumable in every case."""
        ...

    async def wrap_up(self, reason: str, on_text: TextCallback | None = None) -> str:
        """After a limit: one last request for a summary, without tools."""
        ...

    async def clear(self) -> None:
        """Start a fresh conversation in the same session (the REPL's /clear)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ContextControl(Protocol):
    """A handler that owns its context window (nex's own loop; the CLIs manage theirs)."""

    async def ensure_window(self) -> None:
        """Learn the model's context window unless known (the REPL asks in the background)."""
        ...

    async def compact(self) -> str:
        """Compact the conversation now (the REPL's /compact); what was done, in a line."""
        ...


HandlerFactory = Callable[["SpawnPlan", "Session", "Emitter", HandlerOptions], Handler]


def load_factory(plan: SpawnPlan) -> HandlerFactory:
    """The factory of the handler that runs `plan`'s route, imported now (so claude:/codex:
    never import litellm)."""
    module, _, attr = plan.spec.route.factory.partition(":")
    factory: HandlerFactory = getattr(importlib.import_module(module), attr)
    return factory
