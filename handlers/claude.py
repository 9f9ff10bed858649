"""The claude handler: claude-code's own agent loop, one `claude -p` process per turn.

    claude -p --output-format stream-json --verbose [--model M] [--resume=ID]
           [permission flags] [--max-turns=N] [--system-prompt=TEXT] -- MESSAGE

Its stream (measured with claude-code 2.1.197, ../shared/fixtures/real-cli/) maps onto nex's
events: `system/init` gives the session id, `system/api_retry` a warning, `assistant` text and
`tool_use` blocks become messages and tool.call, `user` `tool_result` blocks tool.result, and
`result` ends the turn with the answer, usage, cost and context window (or the error).
"""

from __future__ import annotations

import os
from typing import Any

from handlers.base import Check, CliHandler, Probe, Turn, cli_env, doctor_checks
from nexpy.events import Emitter
from nexpy.handler import HandlerOptions
from nexpy.plan import SpawnPlan
from nexpy.session import Session

PACKAGE = "@anthropic-ai/claude-code"
ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_")
READ_TOOLS = "Read,Glob,Grep"
# What nex's --yes means, in claude's terms. bypassPermissions would be closer, but claude
# refuses it when run as root (containers, CI) unless told it is sandboxed.
AUTONOMOUS = ["--permission-mode=acceptEdits", "--allowedTools=Bash"]
# claude's placeholder model for an error it also reports in the result.
SYNTHETIC = "<synthetic>"


def _text(content: Any) -> str:
    """A tool result's content: a string, or blocks of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class ClaudeHandler(CliHandler):
    name = "claude"
    package = PACKAGE
    env_prefixes = ENV_PREFIXES

    def extra_env(self) -> dict[str, str]:
        # A configured endpoint may name its own key variable; claude reads only its own name.
        name = self.plan.api_key_env
        if name and name in os.environ:
            return {"ANTHROPIC_API_KEY": os.environ[name]}
        return {}

    def command(self, prompt: str, resume: str | None, *, summary: bool) -> list[str]:
        argv = [self.binary, *self.plan.argv[1:]]
        if resume:
            argv.append(f"--resume={resume}")
        if summary:
            argv.append("--tools=")  # no tools at all: just the summary
        elif self.opts.read_only:
            argv.append(f"--tools={READ_TOOLS}")
        elif not self.ask:
            argv += AUTONOMOUS
        # With a person to ask, claude keeps its default mode: a tool that needs a permission
        # is refused (it cannot hand its prompt to nex) and the result lists it.
        if self.opts.max_turns is not None and not summary:
            argv.append(f"--max-turns={max(1, self.opts.max_turns - self.totals.turns)}")
        if self.opts.system_prompt is not None:
            argv.append(f"--system-prompt={self.opts.system_prompt}")
        return [*argv, "--", prompt]

    def handle(self, event: dict[str, Any], turn: Turn) -> None:
        kind = event.get("type")
        if kind == "system":
            self._system(event, turn)
        elif kind == "assistant":
            self._assistant(event, turn)
        elif kind == "user":
            message = event.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else ():
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    turn.tool_result(
                        str(block.get("tool_use_id", "")),
                        ok=not block.get("is_error"),
                        output=_text(block.get("content")),
                    )
        elif kind == "result":
            self._result(event, turn)

    def _system(self, event: dict[str, Any], turn: Turn) -> None:
        subtype = event.get("subtype")
        if subtype == "init" and isinstance(event.get("session_id"), str):
            turn.conversation_id = event["session_id"]
        elif subtype == "api_retry":
            why = event.get("error_status") or event.get("error") or "unknown error"
            turn.warn(
                f"claude: the model request failed ({why}); retry {event.get('attempt')} "
                f"of {event.get('max_retries')}"
            )

    def _assistant(self, event: dict[str, Any], turn: Turn) -> None:
        message = event.get("message")
        if not isinstance(message, dict) or message.get("model") == SYNTHETIC:
            return
        # A subagent's (Task tool) text is its report to claude, not an answer to the person.
        own = event.get("parent_tool_use_id") is None
        usage = message.get("usage")
        if own and isinstance(usage, dict):
            turn.context_used = (
                _int(usage.get("input_tokens"))
                + _int(usage.get("cache_creation_input_tokens"))
                + _int(usage.get("cache_read_input_tokens"))
            )
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and own:
                turn.text(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                turn.tool_call(
                    str(block.get("id", "")), str(block.get("name", "")), block.get("input")
                )

    def _result(self, event: dict[str, Any], turn: Turn) -> None:
        if isinstance(event.get("session_id"), str):
            turn.conversation_id = event["session_id"]
        turn.requests = _int(event.get("num_turns"))
        usage = event.get("usage")
        if isinstance(usage, dict):
            turn.prompt_tokens = (
                _int(usage.get("input_tokens"))
                + _int(usage.get("cache_creation_input_tokens"))
                + _int(usage.get("cache_read_input_tokens"))
            )
            turn.completion_tokens = _int(usage.get("output_tokens"))
        cost = event.get("total_cost_usd")
        if isinstance(cost, int | float):
            turn.cost_usd = float(cost)
        models = event.get("modelUsage")
        if isinstance(models, dict):
            windows = [_int(m.get("contextWindow")) for m in models.values() if isinstance(m, dict)]
            turn.window = max(windows, default=0) or None
        denied = event.get("permission_denials")
        if isinstance(denied, list) and denied:
            names = sorted({str(d.get("tool_name")) for d in denied if isinstance(d, dict)})
            turn.warn(
                f"claude refused {len(denied)} tool call(s) that need a permission "
                f"({', '.join(names)}); nex cannot answer claude's prompts: rerun with --yes "
                "to allow them"
            )
        subtype = event.get("subtype")
        if not event.get("is_error") and subtype == "success":
            result = event.get("result")
            turn.finish(result if isinstance(result, str) else None)
            return
        turn.finished = True
        if subtype == "error_max_turns":
            turn.limit = "max_turns"
            return
        errors = event.get("errors")
        result = event.get("result")
        if isinstance(result, str) and result.strip():
            turn.error = result
        elif isinstance(errors, list) and errors:
            turn.error = "; ".join(str(e) for e in errors)
        else:
            turn.error = f"claude reported {subtype or 'an error'}"


def create(
    plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions
) -> ClaudeHandler:
    """The claude handler for a `claude:` plan."""
    return ClaudeHandler(plan, session, emitter, opts)


def doctor(plan: SpawnPlan) -> list[Check]:
    """`nex doctor -m claude:…`: the binary, its version, that it takes every flag nex may
    pass (claude checks them before it reads the message; no model request is made)."""
    flags = [
        *plan.argv[1:],
        "--resume=00000000-0000-4000-8000-000000000000",
        *AUTONOMOUS,
        f"--tools={READ_TOOLS}",
        "--max-turns=1",
        "--system-prompt=x",
    ]
    # No message on an empty stdin: claude parses every flag, then stops at the missing input.
    probe = Probe("flags", flags, accepted="Input must be provided|No conversation found")
    env = cli_env(plan, ENV_PREFIXES, {})
    endpoint = plan.env.get("ANTHROPIC_BASE_URL")  # what claude calls: no /v1
    return doctor_checks(plan, PACKAGE, env, ["--version"], [probe], endpoint)
