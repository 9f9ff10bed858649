"""Fake `claude` and `codex` executables: the event streams the real CLIs printed here
(../shared/fixtures/real-cli/), replayed without a model, for fast handler tests.

The launchers beside this file (`claude`, `codex`) call `main(name)`. The message picks the
behaviour by a keyword; without one the answer is ``echo: MESSAGE (turn N)``, N counting the
messages of the resumed conversation, so a test sees that resume carried the context:

    fake:tool      a shell tool call and its result, then the answer
    fake:multi     text, a tool call, more text, then the answer
    fake:files     (codex) a file_change item
    fake:fail      the CLI reports an API error, writes stderr, exits 1
    fake:dies      (codex) an error event, then exit 1 without turn.failed
    fake:crash     half an event, a stderr line, then SIGSEGV
    fake:hang      a first event and some text, then sleeps until killed
    fake:noise     unknown event types and a line that is not JSON, then the answer
    fake:noresult  exits 0 without ending its turn
    fake:maxturns  (claude) stops at its --max-turns
    fake:deny      (claude) a tool refused for want of a permission
    fake:leak      (claude) prints its API key on stderr and stdout, then answers
    fake:orphan    leaves a background process holding stdout open (its pid in
                   ``$FAKE_CLI_LOG.orphan``), then answers

Conversations live where the real CLIs keep theirs: ``$CLAUDE_CONFIG_DIR`` (else
``~/.claude``) and ``$CODEX_HOME`` (else ``~/.codex``); resuming an unknown id fails the way
the real CLI does. With ``FAKE_CLI_LOG`` set, each run appends one JSON line: argv, cwd,
whether stdin is /dev/null, and the *names* of the environment variables (never values).
Never imports ``nexpy``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

CLAUDE_VERSION = "2.1.197 (Claude Code)"
CODEX_VERSION = "codex-cli 0.169.0"

CLAUDE_FLAGS = {
    "-p",
    "--print",
    "--output-format",
    "--verbose",
    "--model",
    "--resume",
    "--permission-mode",
    "--allowedTools",
    "--tools",
    "--max-turns",
    "--system-prompt",
}
CLAUDE_VALUED = {"--output-format", "--model", "--resume", "--permission-mode", "--max-turns"}
CODEX_FLAGS = {"--json", "--skip-git-repo-check", "-m", "-c", "-s", "--help"}
CODEX_VALUED = {"-m", "-c", "-s"}


def out(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def log_run(name: str, argv: list[str]) -> None:
    path = os.environ.get("FAKE_CLI_LOG")
    if not path:
        return
    try:
        stdin_null = os.path.samestat(os.fstat(0), os.stat(os.devnull))
    except OSError:
        stdin_null = False
    entry = {
        "cli": name,
        "argv": argv,
        "cwd": os.getcwd(),
        "stdin_null": stdin_null,
        "env": sorted(os.environ),
        "pgid_is_pid": os.getpgid(0) == os.getpid(),
        "pid": os.getpid(),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def split_args(argv: list[str], valued: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Flags (``--x=v``, ``--x v`` for valued flags, bare switches) and positionals; everything
    after ``--`` is positional."""
    flags: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1 :]
            break
        if arg.startswith("-") and len(arg) > 1:
            key, eq, value = arg.partition("=")
            if not eq and key in valued and i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            flags.setdefault(key, []).append(value)
        else:
            positional.append(arg)
        i += 1
    return flags, positional


class Conversations:
    """One file per conversation id, one line per message."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "fake-conversations"
        self.dir.mkdir(parents=True, exist_ok=True)

    def exists(self, cid: str) -> bool:
        return (self.dir / cid).is_file()

    def add(self, cid: str, prompt: str) -> int:
        with open(self.dir / cid, "a", encoding="utf-8") as f:
            f.write(json.dumps(prompt) + "\n")
        return len((self.dir / cid).read_text(encoding="utf-8").splitlines())


def hang() -> None:
    while True:
        time.sleep(3600)


def orphan() -> None:
    # Inherits our stdout and stderr: a pipe reader waiting for EOF would wait 30 s.
    child = subprocess.Popen(["sleep", "30"])
    path = os.environ.get("FAKE_CLI_LOG")
    if path:
        Path(path + ".orphan").write_text(str(child.pid))


# -- claude ------------------------------------------------------------------------------------
def claude(argv: list[str]) -> int:
    if "--version" in argv or "-v" in argv:
        print(CLAUDE_VERSION)
        return 0
    flags, positional = split_args(argv, CLAUDE_VALUED)
    for key in flags:
        if key not in CLAUDE_FLAGS:
            err(f"error: unknown option '{key}'")
            return 1
    if not positional:
        err(
            "Error: Input must be provided either through stdin or as a prompt argument "
            "when using --print"
        )
        return 1
    prompt = positional[-1]
    home = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    convs = Conversations(home)
    sid = (flags.get("--resume") or [""])[-1]
    if sid and not convs.exists(sid):
        message = f"No conversation found with session ID: {sid}"
        out(claude_result(sid, "", subtype="error_during_execution", errors=[message]))
        err(message)
        return 1
    sid = sid or str(uuid.uuid4())
    turn = convs.add(sid, prompt)
    model = (flags.get("--model") or ["claude-opus-4-8"])[-1]
    tools = (flags.get("--tools") or [""])[-1]
    out(
        {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": sid,
            "tools": tools.split(",") if "--tools" in flags else ["Bash", "Edit", "Read", "Write"],
            "model": model,
            "permissionMode": (flags.get("--permission-mode") or ["default"])[-1],
            "apiKeySource": "ANTHROPIC_API_KEY",
            "claude_code_version": CLAUDE_VERSION.split()[0],
        }
    )
    answer = f"echo: {prompt} (turn {turn})"
    if "fake:tool" in prompt:
        out(assistant(sid, tool_use("toolu_1", "Bash", {"command": "echo claude-tool-ran-42"})))
        out(tool_result(sid, "toolu_1", "claude-tool-ran-42", False))
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer, turns=2))
    elif "fake:multi" in prompt:
        out(assistant(sid, {"type": "text", "text": "Let me look."}))
        out(assistant(sid, tool_use("toolu_2", "Read", {"file_path": "a.txt"})))
        out(tool_result(sid, "toolu_2", [{"type": "text", "text": "contents"}], False))
        out(assistant(sid, {"type": "text", "text": "Found it."}))
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer, turns=3))
    elif "fake:fail" in prompt:
        text = "API Error: 500 stub failure"
        out(assistant(sid, {"type": "text", "text": text}, model="<synthetic>"))
        out(claude_result(sid, text, is_error=True))
        err("fake claude: the API answered 500")
        return 1
    elif "fake:crash" in prompt:
        out(assistant(sid, {"type": "text", "text": "partial"}))
        sys.stdout.write('{"type": "assist')
        sys.stdout.flush()
        err("fake claude: about to crash")
        os.kill(os.getpid(), signal.SIGSEGV)
    elif "fake:hang" in prompt:
        out(assistant(sid, {"type": "text", "text": "partial answer"}))
        hang()
    elif "fake:noise" in prompt:
        out({"type": "stream_event", "event": {"type": "ping"}})
        out({"type": "system", "subtype": "compact_boundary"})
        sys.stdout.write("not json at all\n")
        out({"type": "brand_new_type", "payload": [1, 2]})
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer))
    elif "fake:noresult" in prompt:
        out(assistant(sid, {"type": "text", "text": "partial"}))
    elif "fake:maxturns" in prompt:
        out(assistant(sid, tool_use("toolu_3", "Bash", {"command": "true"})))
        out(tool_result(sid, "toolu_3", "", False))
        out(claude_result(sid, "", subtype="error_max_turns", turns=2))
        return 1
    elif "fake:deny" in prompt:
        out(assistant(sid, tool_use("toolu_4", "Bash", {"command": "rm -rf x"})))
        out(tool_result(sid, "toolu_4", "Claude requested permissions to use Bash.", True))
        out(assistant(sid, {"type": "text", "text": answer}))
        denial = {"tool_name": "Bash", "tool_use_id": "toolu_4", "tool_input": {}}
        out(claude_result(sid, answer, turns=2, denials=[denial]))
    elif "fake:orphan" in prompt:
        orphan()
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer))
    elif "fake:leak" in prompt:
        key = os.environ.get("ANTHROPIC_API_KEY", "")
        err(f"debug: using key {key}")
        sys.stdout.write(f"debug: key={key}\n")
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer))
    else:
        out(assistant(sid, {"type": "text", "text": answer}))
        out(claude_result(sid, answer))
    return 0


def tool_use(tid: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": name, "input": arguments}


def assistant(sid: str, block: dict[str, Any], model: str = "claude-opus-4-8") -> dict[str, Any]:
    return {
        "type": "assistant",
        "message": {
            "id": "msg_" + uuid.uuid4().hex[:12],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 1,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
            },
        },
        "parent_tool_use_id": None,
        "session_id": sid,
        "uuid": str(uuid.uuid4()),
    }


def tool_result(sid: str, tid: str, content: Any, is_error: bool) -> dict[str, Any]:
    return {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "tool_use_id": tid,
                    "type": "tool_result",
                    "content": content,
                    "is_error": is_error,
                }
            ],
        },
        "parent_tool_use_id": None,
        "session_id": sid,
        "uuid": str(uuid.uuid4()),
    }


def claude_result(
    sid: str,
    result: str,
    *,
    subtype: str = "success",
    is_error: bool = False,
    turns: int = 1,
    errors: list[str] | None = None,
    denials: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "result",
        "subtype": subtype,
        "is_error": is_error or subtype != "success",
        "duration_ms": 173,
        "num_turns": turns,
        "result": result,
        "stop_reason": "end_turn",
        "session_id": sid,
        "total_cost_usd": 0.000175,
        "usage": {
            "input_tokens": 10 * turns,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100 * turns,
            "output_tokens": 5 * turns,
        },
        "modelUsage": {
            "claude-opus-4-8[1m]": {
                "inputTokens": 10 * turns,
                "outputTokens": 5 * turns,
                "contextWindow": 1000000,
                "maxOutputTokens": 64000,
            }
        },
        "permission_denials": denials or [],
        "uuid": str(uuid.uuid4()),
    }
    if errors is not None:
        event["errors"] = errors
        del event["result"]
    return event


# -- codex -------------------------------------------------------------------------------------
def codex(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-V"]):
        print(CODEX_VERSION)
        return 0
    if argv[:1] != ["exec"]:
        err("fake codex: only `exec` is faked")
        return 2
    rest = argv[1:]
    resume = None
    if rest[:1] == ["resume"]:
        resume, rest = rest[1], rest[2:]
    flags, positional = split_args(rest, CODEX_VALUED)
    for key in flags:
        if key not in CODEX_FLAGS or (resume and key == "-s"):
            err(f"error: unexpected argument '{key}' found")
            return 2
    if "--help" in flags:
        print("Run Codex non-interactively")
        return 0
    if not positional:
        err("fake codex: no prompt")
        return 1
    prompt = positional[-1]
    home = Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")
    convs = Conversations(home)
    if resume and not convs.exists(resume):
        err(
            "Error: thread/resume: thread/resume failed: no rollout found for thread id "
            f"{resume} (code -32600)"
        )
        return 1
    tid = resume or str(uuid.uuid4())
    turn = convs.add(tid, prompt)
    err("Reading additional input from stdin...")
    out({"type": "thread.started", "thread_id": tid})
    model = (flags.get("-m") or ["gpt-5"])[-1]
    out(
        item(
            "completed",
            "item_0",
            type="error",
            message=f"Model metadata for `{model}` not found. Defaulting to fallback metadata.",
        )
    )
    out({"type": "turn.started"})
    answer = f"echo: {prompt} (turn {turn})"
    usage = {
        "input_tokens": 10,
        "cached_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "output_tokens": 5,
        "reasoning_output_tokens": 0,
    }
    if "fake:tool" in prompt:
        command = "/bin/bash -lc 'echo tool-ran-$((6*7))'"
        started = {"command": command, "aggregated_output": "", "exit_code": None}
        out(item("started", "item_1", type="command_execution", status="in_progress", **started))
        done = {"command": command, "aggregated_output": "tool-ran-42\n", "exit_code": 0}
        out(item("completed", "item_1", type="command_execution", status="completed", **done))
        out(item("completed", "item_2", type="reasoning", text="thinking about it"))
        out(item("completed", "item_3", type="agent_message", text=answer))
    elif "fake:files" in prompt:
        changes = [{"path": "a.py", "kind": "update"}, {"path": "b.py", "kind": "add"}]
        out(item("completed", "item_1", type="file_change", changes=changes, status="completed"))
        out(item("completed", "item_2", type="agent_message", text=answer))
    elif "fake:multi" in prompt:
        out(item("completed", "item_1", type="agent_message", text="Let me look."))
        out(item("completed", "item_2", type="agent_message", text=answer))
    elif "fake:fail" in prompt:
        body = json.dumps({"error": {"message": "stub says no", "type": "invalid_request_error"}})
        out({"type": "error", "message": "Reconnecting... 1/5 (stream disconnected)"})
        out({"type": "error", "message": body})
        out({"type": "turn.failed", "error": {"message": body}})
        return 1
    elif "fake:dies" in prompt:
        out({"type": "error", "message": "stream disconnected before completion"})
        return 1
    elif "fake:crash" in prompt:
        sys.stdout.write('{"type": "item.comp')
        sys.stdout.flush()
        err("fake codex: thread 'main' panicked")
        os.kill(os.getpid(), signal.SIGSEGV)
    elif "fake:hang" in prompt:
        out(item("completed", "item_1", type="agent_message", text="partial answer"))
        hang()
    elif "fake:noise" in prompt:
        out({"type": "item.updated", "item": {"id": "t", "type": "todo_list", "items": []}})
        sys.stdout.write("not json at all\n")
        out({"type": "brand_new_type"})
        out(item("completed", "item_1", type="agent_message", text=answer))
    elif "fake:noresult" in prompt:
        out(item("completed", "item_1", type="agent_message", text="partial"))
        return 0
    elif "fake:orphan" in prompt:
        orphan()
        out(item("completed", "item_1", type="agent_message", text=answer))
    else:
        out(item("completed", "item_1", type="agent_message", text=answer))
    out({"type": "turn.completed", "usage": usage})
    return 0


def item(phase: str, iid: str, **fields: Any) -> dict[str, Any]:
    return {"type": f"item.{phase}", "item": {"id": iid, **fields}}


def main(name: str) -> int:
    argv = sys.argv[1:]
    log_run(name, argv)
    return claude(argv) if name == "claude" else codex(argv)
