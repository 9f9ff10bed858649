"""The one event stream (DESIGN §5), shared by nex and the claude/codex handlers.

An `Emitter` stamps each event with `type`, `session` and `ts` and hands it to its sinks:
`JsonSink` writes one JSON object per line to stdout (`--json`); `ProgressSink` renders tool
activity, warnings and errors as short lines on stderr for a person.

`reasoning` {content}: a reasoning model's thinking in one model turn (nexpy.reasoning), emitted
before that turn's `message` (or its tool calls); never part of a `message`'s content.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from nexpy.credentials import redact_any
from nexpy.progress import Ticker
from nexpy.reasoning import tokens

Event = dict[str, Any]
Sink = Callable[[Event], None]
Emit = Callable[..., Event]  # Emitter.emit: (type, **fields)

EVENT_TYPES = frozenset(
    {
        "session.started",
        "turn.started",
        "message",
        "reasoning",
        "tool.call",
        "tool.result",
        "usage",
        "context",
        "warning",
        "error",
        "session.ended",
    }
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Emitter:
    """Stamps and fans out events; the session id may be learned after the first event."""

    def __init__(self, session: str = "", sinks: list[Sink] | None = None) -> None:
        self.session = session
        self.sinks: list[Sink] = list(sinks or [])

    def emit(self, type: str, **fields: Any) -> Event:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        # Redacted here, once for every sink: a server's error text may echo a key.
        fields = redact_any(fields)
        event: Event = {"type": type, "session": self.session, "ts": now_iso(), **fields}
        for sink in self.sinks:
            sink(event)
        return event


class JsonSink:
    """One event per line on stdout, flushed so a consumer sees it at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.stream.flush()


def _preview(text: str, width: int = 100) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    more = len(text.strip().splitlines()) > 1
    if len(first) > width:
        first, more = first[: width - 1], True
    return first + (" …" if more else "")


def describe_call(name: str, arguments: Any) -> str:
    """A one-line human summary of a tool call, e.g. `bash: python3 hello.py`."""
    if isinstance(arguments, dict):
        key = next(
            (k for k in ("command", "cmd", "path", "file_path", "pattern") if k in arguments),
            None,
        )
        shown = str(arguments[key]) if key else json.dumps(arguments, ensure_ascii=False)
    else:
        shown = str(arguments)
    return f"{name}: {_preview(shown)}"


class ProgressSink:
    """Human-readable progress on stderr: tool calls and results, warnings, errors."""

    def __init__(
        self, stream: TextIO | None = None, *, verbose: bool = False, live: Ticker | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.live = live  # the status line of the request in flight, on a terminal

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        line: str | None = None
        if self.live is not None:
            if kind == "context":  # a request is about to go out
                self.live.progress.start()
            elif kind in ("usage", "message", "tool.call", "error", "session.ended"):
                self.live.progress.stop()
            self.live.clear()
        if kind == "tool.call":
            line = f"→ {describe_call(event['name'], event['arguments'])}"
        elif kind == "tool.result":
            mark = "✓" if event["ok"] else "✗"
            line = f"  {mark} {_preview(event['output']) or '(no output)'}"
        elif kind == "warning":
            line = f"warning: {event['message']}"
        elif kind == "message" and event.get("role") == "assistant" and not event.get("final"):
            line = event["content"].strip() or None  # the final answer goes to stdout instead
        elif kind == "reasoning":
            line = f"(thought for ≈{tokens(len(event['content'])):,} tokens)"
        elif kind == "session.ended":
            line = (
                f"— session {event['session']}: {event['status']} after {event['turns']} turns, "
                f"{event['duration_s']:.1f} s"
            )
        elif self.verbose and kind in ("usage", "context"):
            line = f"[{kind}] " + json.dumps(
                {k: v for k, v in event.items() if k not in ("type", "session", "ts")}
            )
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
