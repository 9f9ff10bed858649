"""The codex handler: codex's own agent loop, one `codex exec` process per turn.

    codex exec --json --skip-git-repo-check [-m M] [-c …] -s SANDBOX -- MESSAGE
    codex exec resume ID --json --skip-git-repo-check [-m M] [-c …] -c sandbox_mode=… -- MESSAGE

(`exec resume` takes no `-s`, and the sandbox is not kept across a resume: it is passed every
turn.) Its stream (measured with codex-cli 0.169.0, ../shared/fixtures/real-cli/) maps onto
nex's events: `thread.started` gives the thread id; `item.*` of type `agent_message` become
messages, `command_execution`, `file_change`, `mcp_tool_call` and `web_search` tool calls and
results, `error` items warnings; `turn.completed` ends the turn with its usage, `turn.failed`
with the error. `reasoning` items are not shown, as nex's own loop does not show them either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from handlers.base import Check, CliHandler, Probe, Turn, cli_env, doctor_checks
from nexpy.events import Emitter
from nexpy.handler import HandlerOptions
from nexpy.plan import SpawnPlan
from nexpy.session import Session

PACKAGE = "@openai/codex"
ENV_PREFIXES = ("OPENAI_", "CODEX_")
INSTRUCTIONS = "codex-instructions.md"  # --system-prompt, in the session folder


def _readable(message: Any) -> str:
    """An error message; codex passes a server's JSON error body through as the message."""
    text = str(message or "")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return text


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class CodexHandler(CliHandler):
    name = "codex"
    package = PACKAGE
    env_prefixes = ENV_PREFIXES

    def __init__(
        self, plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions
    ) -> None:
        super().__init__(plan, session, emitter, opts)
        self.instructions: Path | None = None
        if opts.system_prompt is not None:
            # codex replaces its base prompt only from a file.
            self.instructions = session.path / INSTRUCTIONS
            fd = os.open(self.instructions, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(opts.system_prompt)

    def extra_env(self) -> dict[str, str]:
        # The endpoint's key variable, named in the provider's env_key (nexpy.plan).
        name = self.plan.api_key_env
        if name and name in os.environ:
            return {name: os.environ[name]}
        return {}

    def command(self, prompt: str, resume: str | None, *, summary: bool) -> list[str]:
        exec_flags = self.plan.argv[2:]  # after "codex exec"
        sandbox = "read-only" if self.opts.read_only or summary else "workspace-write"
        if resume:
            argv = [self.binary, "exec", "resume", resume, *exec_flags]
            argv += ["-c", f"sandbox_mode={json.dumps(sandbox)}"]
        else:
            argv = [self.binary, "exec", *exec_flags, "-s", sandbox]
        if self.instructions is not None:
            argv += ["-c", f"model_instructions_file={json.dumps(str(self.instructions))}"]
        return [*argv, "--", prompt]

    def handle(self, event: dict[str, Any], turn: Turn) -> None:
        kind = event.get("type")
        if kind == "error":
            # Retries ("Reconnecting... 1/5") and, last, the failure turn.failed repeats.
            if turn.held is not None:
                turn.warn(f"codex: {turn.held}")
            turn.held = _readable(event.get("message"))
            return
        if turn.held is not None and kind != "turn.failed":
            turn.warn(f"codex: {turn.held}")
            turn.held = None
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            turn.conversation_id = event["thread_id"]
        elif kind in ("item.started", "item.completed"):
            item = event.get("item")
            if isinstance(item, dict):
                self._item(item, turn, done=kind == "item.completed")
        elif kind == "turn.completed":
            usage = event.get("usage")
            if isinstance(usage, dict):
                turn.prompt_tokens = _int(usage.get("input_tokens"))
                turn.completion_tokens = _int(usage.get("output_tokens"))
            turn.requests = 1
            turn.finish()
        elif kind == "turn.failed":
            error = event.get("error")
            message = _readable(error.get("message") if isinstance(error, dict) else error)
            if turn.held is not None and turn.held != message:
                turn.warn(f"codex: {turn.held}")
            turn.held = None
            turn.error = message or "codex reported a failed turn"
            turn.requests = 1
            turn.finished = True

    def _item(self, item: dict[str, Any], turn: Turn, *, done: bool) -> None:
        kind = item.get("type")
        call_id = str(item.get("id", ""))
        status = item.get("status")
        if kind == "agent_message" and done:
            turn.text(str(item.get("text", "")))
        elif kind == "command_execution":
            if not turn.has_call(call_id):
                turn.tool_call(call_id, "bash", {"command": item.get("command", "")})
            if done:
                ok = status == "completed" and item.get("exit_code") == 0
                turn.tool_result(call_id, ok, str(item.get("aggregated_output") or ""))
        elif kind == "file_change" and done:
            raw = item.get("changes")
            changes: list[Any] = raw if isinstance(raw, list) else []
            turn.tool_call(call_id, "file_change", {"changes": changes})
            lines = [
                f"{c.get('kind', 'change')} {c.get('path', '')}"
                for c in changes
                if isinstance(c, dict)
            ]
            turn.tool_result(call_id, status == "completed", "\n".join(lines))
        elif kind == "mcp_tool_call":
            if not turn.has_call(call_id):
                name = f"{item.get('server', 'mcp')}.{item.get('tool', '')}"
                turn.tool_call(call_id, name, item.get("arguments"))
            if done:
                error = item.get("error")
                if isinstance(error, dict):
                    turn.tool_result(call_id, False, str(error.get("message", "")))
                else:
                    output = item.get("result")
                    text = output if isinstance(output, str) else json.dumps(output)
                    turn.tool_result(call_id, status == "completed", text)
        elif kind == "web_search" and done:
            turn.tool_call(call_id, "web_search", {"query": item.get("query", "")})
            turn.tool_result(call_id, True, "")
        elif kind == "error" and done:
            turn.warn(f"codex: {item.get('message', '')}")


def create(
    plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions
) -> CodexHandler:
    """The codex handler for a `codex:` plan."""
    return CodexHandler(plan, session, emitter, opts)


def doctor(plan: SpawnPlan) -> list[Check]:
    """`nex doctor -m codex:…`: the binary, its version, and that `exec` and `exec resume`
    take every flag nex may pass (with --help last, codex parses them and exits; no model
    request is made)."""
    exec_flags = plan.argv[2:]
    sandbox = ["-c", 'sandbox_mode="workspace-write"', "-c", 'model_instructions_file="x"']
    probes = [
        Probe("exec flags", ["exec", *exec_flags, "-s", "workspace-write", "--help"]),
        Probe("resume flags", ["exec", "resume", *exec_flags, *sandbox, "--help"]),
    ]
    env = cli_env(plan, ENV_PREFIXES, {})
    return doctor_checks(plan, PACKAGE, env, ["--version"], probes, plan.endpoint)
