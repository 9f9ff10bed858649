"""What a tool is: its schema and run function, the context it runs in, and what it returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexpy.sandbox import Sandbox


@dataclass
class ToolContext:
    """What a tool may touch: the work dir, where full outputs go, the output limits, and the
    sandbox bash runs in (whose mode the file tools obey too)."""

    workdir: Path  # resolved absolute; every path stays inside it
    outputs_dir: Path | None  # the session's "tool-outputs/" dir; None = don't keep full text
    output_cap: int = 16_000  # chars kept in the result shown to the model (head + tail)
    bash_timeout: float = 120.0  # default seconds; the model may pass its own (capped at 600)
    sandbox: Sandbox = field(default_factory=Sandbox)  # off unless the run's plan says otherwise


@dataclass
class ToolResult:
    """What goes back to the model for one call."""

    ok: bool
    output: str  # already capped
    truncated: bool = False
    full_path: str | None = None  # where the full text is kept when truncated


class ToolError(Exception):
    """Raised inside a tool for a failure the model should see (bad path, no match ...).

    `output`, when given, is shown to the model as is (bash uses it to return what a failed
    command printed, ending in "[exit code N]"); otherwise the model sees "error: <message>".
    """

    def __init__(self, message: str, *, output: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.output = output


@dataclass(frozen=True)
class Tool:
    """One tool as the model sees it, plus whether it changes anything."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema (type: object)
    mutating: bool
    run: Callable[[dict[str, Any], ToolContext], Awaitable[str]]  # raw text or raises ToolError
