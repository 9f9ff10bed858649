"""The protocol every handler implements: nex's own agent loop and the claude/codex wrappers.

The CLI, the REPL and the autonomous runner speak only this, so a user cannot tell from the
interface which handler runs, except by the model they chose.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nexpy.events import Emitter
    from nexpy.plan import SpawnPlan
    from nexpy.session import Session

TextCallback = Callable[[str], None]
Confirm = Callable[[str, dict[str, Any]], Awaitable[bool]]


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
    extra: dict[str, Any] = field(default_factory=dict)


class Handler(Protocol):
    totals: Totals
    context_used: int  # tokens of the last request (0 when the handler cannot tell)

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


HandlerFactory = Callable[["SpawnPlan", "Session", "Emitter", HandlerOptions], Handler]

# handler name -> "module:factory". Loaded lazily so claude:/codex: never import litellm.
FACTORIES = {
    "nex": "nexpy.agent:create",
    "claude": "handlers.claude:create",
    "codex": "handlers.codex:create",
}


def load_factory(name: str) -> HandlerFactory:
    module, _, attr = FACTORIES[name].partition(":")
    factory: HandlerFactory = getattr(importlib.import_module(module), attr)
    return factory
