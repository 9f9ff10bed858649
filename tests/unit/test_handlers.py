"""The claude and codex handlers against fake CLIs (stubs/fake_cli): argv, event mapping,
resume, failures, cancel, limits, environment, doctor; plus `nex` itself on a fake CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from handlers import claude as claude_mod
from handlers import codex as codex_mod
from handlers.base import EXIT_GRACE, STATE_FILE, STDERR_LOG
from nexpy.config import Config
from nexpy.errors import HandlerError, LimitReached, UsageError
from nexpy.events import Emitter
from nexpy.handler import HandlerOptions, load_factory
from nexpy.plan import SpawnRequest, plan_spawn
from nexpy.session import Session
from tests.conftest import SENTINEL_KEY, NexEnv

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "stubs" / "fake_cli"
# The fakes' `#!/usr/bin/env python3` finds this interpreter first, not a slower shim.
FAKE_PATH = f"{FAKES}{os.pathsep}{Path(sys.executable).parent}"
OTHER_KEY = "sk-or-other-provider-0123456789"


@dataclass
class Rig:
    """A locked session, an event list, and the fake CLIs first on PATH."""

    root: Path
    session: Session
    events: list[dict[str, Any]]
    log: Path
    work: Path
    stderr: list[str] = field(default_factory=list)

    def make(
        self, model: str, endpoint: str | None = None, **opts: Any
    ) -> claude_mod.ClaudeHandler | codex_mod.CodexHandler:
        plan = plan_spawn(SpawnRequest(model=model, endpoint=endpoint), Config(), {})
        emitter = Emitter(self.session.id, sinks=[self.events.append])
        handler = load_factory(plan)(
            plan, self.session, emitter, HandlerOptions(workdir=self.work, **opts)
        )
        assert isinstance(handler, claude_mod.ClaudeHandler | codex_mod.CodexHandler)
        return handler

    def runs(self) -> list[dict[str, Any]]:
        """What each fake CLI run recorded: argv, cwd, stdin, env names."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def journal_messages(self) -> list[dict[str, Any]]:
        return [e["message"] for e in self.session.entries() if e["kind"] == "message"]

    def state(self) -> dict[str, Any]:
        return json.loads((self.session.path / STATE_FILE).read_text())

    def stderr_log(self) -> str:
        return (self.session.path / STDERR_LOG).read_text()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setenv("PATH", f"{FAKE_PATH}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-home"))
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    monkeypatch.setenv("FAKE_CLI_LOG", str(tmp_path / "runs.jsonl"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("OPENROUTER_API_KEY", OTHER_KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    session = Session.create(tmp_path / "home", "s1")
    session.lock()
    rig = Rig(tmp_path, session, [], tmp_path / "runs.jsonl", work)
    yield rig
    session.close()


# -- claude: one turn, resume, mapping ---------------------------------------------------------
async def test_claude_turn_runs_the_documented_command_and_journals_each_message_once(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = rig.make("claude:sonnet")
    answer = await handler.send("hello there")
    assert answer == "echo: hello there (turn 1)"

    (run,) = rig.runs()
    argv = run["argv"]
    assert argv[:6] == ["-p", "--output-format", "stream-json", "--verbose", "--model", "sonnet"]
    assert argv[-2:] == ["--", "hello there"]
    assert not any(a.startswith("--resume") for a in argv)
    assert run["stdin_null"] and run["pgid_is_pid"]
    assert run["cwd"] == str(rig.work)

    # Announced before the spawn: the command and where its stderr goes.
    err = capsys.readouterr().err
    assert "nex: claude: " in err and "-p --output-format stream-json" in err
    assert str(rig.session.path / STDERR_LOG) in err
    assert "hello there" not in err  # the message is in the journal, not the announce line

    assert rig.journal_messages() == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "echo: hello there (turn 1)"},
    ]
    messages = rig.of("message")
    assert [(m["role"], m.get("final")) for m in messages] == [("user", None), ("assistant", True)]
    (usage,) = rig.of("usage")
    assert usage["prompt_tokens"] == 110 and usage["completion_tokens"] == 5
    assert usage["cost_usd"] == pytest.approx(0.000175)
    (context,) = rig.of("context")
    assert context == {**context, "used": 115, "window": 1_000_000}
    assert handler.window == 1_000_000 and handler.context_used == 115
    assert handler.totals.turns == 1 and handler.totals.input_tokens == 110
    assert rig.state()["claude"]  # the CLI's session id, kept in the session folder


async def test_claude_resumes_its_session_across_turns_and_processes(rig: Rig) -> None:
    first = rig.make("claude:sonnet")
    await first.send("one")
    sid = rig.state()["claude"]
    assert await first.send("two") == "echo: two (turn 2)"
    # A later `nex --chat` is a new handler on the same session folder.
    again = rig.make("claude:sonnet")
    assert await again.send("three") == "echo: three (turn 3)"
    runs = rig.runs()
    assert [f"--resume={sid}" in r["argv"] for r in runs] == [False, True, True]
    assert rig.state()["claude"] == sid
    assert len(rig.journal_messages()) == 6


async def test_a_stale_claude_id_is_dropped_with_a_warning_and_the_turn_retried_once(
    rig: Rig,
) -> None:
    (rig.session.path / STATE_FILE).write_text(json.dumps({"claude": "0000-gone"}))
    handler = rig.make("claude:sonnet")
    assert await handler.send("hi") == "echo: hi (turn 1)"
    runs = rig.runs()
    assert len(runs) == 2
    assert "--resume=0000-gone" in runs[0]["argv"]
    assert not any(a.startswith("--resume") for a in runs[1]["argv"])
    (warning,) = rig.of("warning")
    assert "0000-gone" in warning["message"] and "fresh" in warning["message"]
    assert rig.state()["claude"] != "0000-gone"
    assert "No conversation found" in rig.stderr_log()
    # One user message in the journal, though the CLI ran twice.
    assert [m["role"] for m in rig.journal_messages()] == ["user", "assistant"]


async def test_claude_tool_use_and_result_become_tool_events(rig: Rig) -> None:
    handler = rig.make("claude:sonnet")
    await handler.send("please fake:tool")
    (call,) = rig.of("tool.call")
    (result,) = rig.of("tool.result")
    assert call["name"] == "Bash" and call["arguments"] == {"command": "echo claude-tool-ran-42"}
    assert result == {
        **result,
        "id": call["id"],
        "name": "Bash",
        "ok": True,
        "output": "claude-tool-ran-42",
        "truncated": False,
    }
    assert handler.totals.turns == 2  # claude's num_turns: two model requests


async def test_only_the_last_text_is_the_final_answer_and_on_text_sees_all(rig: Rig) -> None:
    handler = rig.make("claude:sonnet")
    pieces: list[str] = []
    answer = await handler.send("fake:multi", pieces.append)
    assert answer == "echo: fake:multi (turn 1)"
    texts = [(m["content"], m.get("final")) for m in rig.of("message") if m["role"] != "user"]
    assert texts == [("Let me look.", False), ("Found it.", False), (answer, True)]
    assert "".join(pieces) == f"Let me look.\n\nFound it.\n\n{answer}"
    (result,) = rig.of("tool.result")
    assert result["output"] == "contents" and result["name"] == "Read"
    assert rig.journal_messages()[-1] == {"role": "assistant", "content": answer}


async def test_unknown_events_and_non_json_lines_are_ignored_not_fatal(rig: Rig) -> None:
    handler = rig.make("claude:sonnet")
    assert await handler.send("fake:noise") == "echo: fake:noise (turn 1)"
    assert "[stdout] not json at all" in rig.stderr_log()
    assert not rig.of("warning") and not rig.of("error")


async def test_permission_denials_are_reported_as_a_warning(rig: Rig) -> None:
    async def never(name: str, args: dict[str, Any]) -> bool:
        return False

    handler = rig.make("claude:sonnet", confirm=never)  # the REPL without --yes
    await handler.send("fake:deny")
    (result,) = rig.of("tool.result")
    assert result["ok"] is False
    (warning,) = rig.of("warning")
    assert "Bash" in warning["message"] and "--yes" in warning["message"]
    argv = rig.runs()[0]["argv"]
    assert not any(a.startswith(("--permission-mode", "--allowedTools")) for a in argv)


@pytest.mark.parametrize(
    ("opts", "expected", "absent"),
    [
        ({}, ["--permission-mode=acceptEdits", "--allowedTools=Bash"], ["--tools="]),
        ({"yes": True}, ["--permission-mode=acceptEdits", "--allowedTools=Bash"], []),
        ({"read_only": True}, ["--tools=Read,Glob,Grep"], ["--allowedTools=Bash"]),
        (
            {"max_turns": 5, "system_prompt": "be brief"},
            ["--max-turns=5", "--system-prompt=be brief"],
            [],
        ),
    ],
)
async def test_claude_flags_follow_the_run_options(
    rig: Rig, opts: dict[str, Any], expected: list[str], absent: list[str]
) -> None:
    handler = rig.make("claude:sonnet", **opts)
    await handler.send("hi")
    argv = rig.runs()[0]["argv"]
    for flag in expected:
        assert flag in argv
    for flag in absent:
        assert flag not in argv


async def test_claude_max_turns_inside_the_cli_is_a_limit_and_wrap_up_has_no_tools(
    rig: Rig,
) -> None:
    handler = rig.make("claude:sonnet", max_turns=2)
    with pytest.raises(LimitReached) as info:
        await handler.send("fake:maxturns")
    assert info.value.reason == "max_turns" and info.value.exit_code == 3
    summary = await handler.wrap_up("max_turns")
    assert summary.startswith("echo: [nex] The run reached its turn limit")
    wrap = rig.runs()[-1]["argv"]
    assert "--tools=" in wrap and not any(a.startswith("--max-turns") for a in wrap)
    assert any(a.startswith("--resume=") for a in wrap)
    # A further message is refused at once: the limit is spent.
    with pytest.raises(LimitReached):
        await handler.send("more")


# -- failures: never silent --------------------------------------------------------------------
async def test_a_cli_error_ends_in_one_line_with_status_stderr_and_log(rig: Rig) -> None:
    handler = rig.make("claude:sonnet")
    with pytest.raises(HandlerError) as info:
        await handler.send("fake:fail")
    line = info.value.line()
    assert "\n" not in line
    assert "claude exited with status 1" in line
    assert "API Error: 500 stub failure" in line
    assert "fake claude: the API answered 500" in line  # the last stderr line
    assert str(rig.session.path / STDERR_LOG) in line
    assert info.value.exit_code == 1
    log = rig.session.path / STDERR_LOG
    assert "fake claude: the API answered 500" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "exited with status 1" in log.read_text()
    # The synthetic error message is not shown as an assistant message.
    assert [m["role"] for m in rig.of("message")] == ["user"]


async def test_a_crash_mid_stream_names_the_signal_and_the_last_stderr_line(rig: Rig) -> None:
    handler = rig.make("codex:gpt-5")
    with pytest.raises(HandlerError) as info:
        await handler.send("fake:crash")
    line = info.value.line()
    assert "codex was killed by SIGSEGV" in line
    assert "thread 'main' panicked" in line
    assert str(rig.session.path / STDERR_LOG) in line


async def test_exit_0_without_an_ended_turn_is_still_an_error(rig: Rig) -> None:
    handler = rig.make("claude:sonnet")
    with pytest.raises(HandlerError, match="ended without finishing its turn"):
        await handler.send("fake:noresult")


async def test_a_missing_binary_is_a_usage_error_with_the_install_hint(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(rig.root / "empty"))
    for model, package in (("claude:x", "@anthropic-ai/claude-code"), ("codex:x", "@openai/codex")):
        with pytest.raises(UsageError) as info:
            rig.make(model)
        assert info.value.exit_code == 2
        assert f"npm install -g {package}" in info.value.line()


async def test_a_background_process_left_holding_stdout_does_not_hang_the_turn(
    rig: Rig,
) -> None:
    handler = rig.make("claude:sonnet")
    start = time.monotonic()
    assert await handler.send("fake:orphan") == "echo: fake:orphan (turn 1)"
    assert time.monotonic() - start < EXIT_GRACE  # the orphan sleeps 30 s
    orphan = int(Path(f"{rig.log}.orphan").read_text())
    assert _gone(orphan)  # nothing of a turn outlives it


# -- cancel and time limit ---------------------------------------------------------------------
async def _wait_for_run(rig: Rig, count: int) -> dict[str, Any]:
    for _ in range(500):
        runs = rig.runs()
        if len(runs) >= count and (rig.session.path / STATE_FILE).exists():
            return runs[count - 1]
        await asyncio.sleep(0.01)
    raise AssertionError("the fake CLI never started")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited; only its parent's reaping is pending.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.parametrize("model", ["claude:sonnet", "codex:gpt-5"])
async def test_cancel_kills_the_cli_keeps_the_partial_text_and_the_next_turn_resumes(
    rig: Rig, model: str
) -> None:
    handler = rig.make(model)
    task = asyncio.create_task(handler.send("fake:hang"))
    run = await _wait_for_run(rig, 1)
    await asyncio.sleep(0.2)  # let the partial text arrive
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(run["pid"])
    assert rig.journal_messages()[-1] == {
        "role": "assistant",
        "content": "partial answer\n[interrupted by the user]",
    }
    assert await handler.send("next") == "echo: next (turn 2)"


async def test_max_time_kills_the_cli_and_is_a_time_limit(rig: Rig) -> None:
    handler = rig.make("claude:sonnet", max_time=1.0)
    start = time.monotonic()
    with pytest.raises(LimitReached) as info:
        await handler.send("fake:hang")
    assert info.value.reason == "max_time"
    assert time.monotonic() - start < 8
    assert _gone(rig.runs()[0]["pid"])


# -- environment: the CLI's own key reaches it, no other credential does -----------------------
async def test_each_cli_gets_its_own_credentials_and_no_other_provider_s(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-for-codex-123456")
    await rig.make("claude:sonnet").send("hi")
    await rig.make("codex:gpt-5").send("hi")
    claude_run, codex_run = rig.runs()
    assert "ANTHROPIC_API_KEY" in claude_run["env"]
    assert "OPENAI_API_KEY" not in claude_run["env"]
    assert "OPENROUTER_API_KEY" not in claude_run["env"]
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC" in claude_run["env"]
    assert "OPENAI_API_KEY" in codex_run["env"]
    assert "ANTHROPIC_API_KEY" not in codex_run["env"]
    assert "OPENROUTER_API_KEY" not in codex_run["env"]
    for path in rig.session.path.iterdir():
        if path.is_file():
            assert SENTINEL_KEY not in path.read_text(), path
    assert SENTINEL_KEY not in json.dumps(rig.events)


async def test_a_key_the_cli_prints_is_redacted_in_the_stderr_log(rig: Rig) -> None:
    await rig.make("claude:sonnet").send("fake:leak")
    log = rig.stderr_log()
    assert "debug: using key [redacted]" in log
    assert "[stdout] debug: key=[redacted]" in log
    assert SENTINEL_KEY not in log


# -- codex --------------------------------------------------------------------------------------
async def test_codex_first_turn_then_exec_resume_with_the_sandbox_every_turn(rig: Rig) -> None:
    handler = rig.make("codex:qwen3-coder", "http://127.0.0.1:9")
    assert await handler.send("one") == "echo: one (turn 1)"
    tid = rig.state()["codex"]
    assert await handler.send("two") == "echo: two (turn 2)"
    first, second = (r["argv"] for r in rig.runs())
    assert first[:4] == ["exec", "--json", "--skip-git-repo-check", "-m"]
    assert first[first.index("-s") + 1] == "workspace-write"
    assert first[-2:] == ["--", "one"]
    provider = 'model_providers.nex.base_url="http://127.0.0.1:9/v1"'
    assert provider in first and "model_providers.nex.wire_api=responses" in first
    assert second[:5] == ["exec", "resume", tid, "--json", "--skip-git-repo-check"]
    assert "-s" not in second and 'sandbox_mode="workspace-write"' in second
    assert provider in second
    # codex's "model metadata" item is a warning, every turn.
    assert all("Model metadata" in w["message"] for w in rig.of("warning"))
    assert handler.totals.turns == 2 and handler.totals.output_tokens == 10


async def test_codex_read_only_and_system_prompt(rig: Rig) -> None:
    handler = rig.make("codex:gpt-5", read_only=True, system_prompt="You are terse.")
    await handler.send("hi")
    argv = rig.runs()[0]["argv"]
    assert argv[argv.index("-s") + 1] == "read-only"
    instructions = rig.session.path / codex_mod.INSTRUCTIONS
    assert instructions.read_text() == "You are terse."
    assert f"model_instructions_file={json.dumps(str(instructions))}" in argv


async def test_codex_command_execution_and_file_change_become_tool_events(rig: Rig) -> None:
    handler = rig.make("codex:gpt-5")
    await handler.send("fake:tool")
    await handler.send("fake:files")
    calls = rig.of("tool.call")
    results = rig.of("tool.result")
    assert [c["name"] for c in calls] == ["bash", "file_change"]
    assert calls[0]["arguments"] == {"command": "/bin/bash -lc 'echo tool-ran-$((6*7))'"}
    assert results[0]["ok"] and results[0]["output"] == "tool-ran-42\n"
    assert results[1]["output"] == "update a.py\nadd b.py"
    # reasoning is not shown, as nex's own loop does not show it
    assert "thinking" not in json.dumps(rig.of("message"))


async def test_codex_failure_warns_retries_once_and_states_the_server_message(rig: Rig) -> None:
    handler = rig.make("codex:gpt-5")
    with pytest.raises(HandlerError) as info:
        await handler.send("fake:fail")
    line = info.value.line()
    assert line.startswith("codex exited with status 1: stub says no")
    assert "Reading additional input from stdin" in line  # the last stderr line
    warnings = [w["message"] for w in rig.of("warning")]
    assert "codex: Reconnecting... 1/5 (stream disconnected)" in warnings
    assert not any("stub says no" in w for w in warnings)  # said once, in the error


async def test_codex_s_last_error_event_is_the_failure_when_no_turn_failed_follows(
    rig: Rig,
) -> None:
    with pytest.raises(HandlerError) as info:
        await rig.make("codex:gpt-5").send("fake:dies")
    assert "status 1: stream disconnected before completion" in info.value.line()
    assert not rig.of("warning")[1:]  # only the model-metadata item; the error is not repeated


async def test_a_stale_codex_thread_is_retried_fresh(rig: Rig) -> None:
    (rig.session.path / STATE_FILE).write_text(json.dumps({"codex": "01a1-gone"}))
    handler = rig.make("codex:gpt-5")
    assert await handler.send("hi") == "echo: hi (turn 1)"
    assert [r["argv"][:2] for r in rig.runs()] == [["exec", "resume"], ["exec", "--json"]]
    assert any("01a1-gone" in w["message"] for w in rig.of("warning"))


async def test_clear_forgets_the_cli_conversation(rig: Rig) -> None:
    handler = rig.make("codex:gpt-5")
    await handler.send("one")
    await handler.clear()
    assert await handler.send("two") == "echo: two (turn 1)"
    assert rig.session.messages()[0] == {"role": "user", "content": "two"}


async def test_a_session_begun_with_another_handler_warns_that_the_cli_starts_fresh(
    rig: Rig,
) -> None:
    rig.session.append("message", message={"role": "user", "content": "earlier"})
    rig.make("claude:sonnet")
    (warning,) = rig.of("warning")
    assert "starts a fresh one" in warning["message"]


# -- plan, doctor ---------------------------------------------------------------------------------
def test_plan_argv_and_env_for_the_cli_handlers_never_hold_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL_KEY)
    claude = plan_spawn(SpawnRequest("claude:opus", "http://127.0.0.1:7"), Config(), {})
    assert claude.argv == [
        *("claude", "-p", "--output-format", "stream-json", "--verbose"),
        *("--model", "opus"),
    ]
    assert claude.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:7"  # no /v1: claude adds it
    assert "argv=claude -p --output-format stream-json" in claude.line()
    assert SENTINEL_KEY not in claude.line()
    bare = plan_spawn(SpawnRequest("claude:"), Config(), {})
    assert "--model" not in bare.argv and "ANTHROPIC_BASE_URL" not in bare.env
    codex = plan_spawn(SpawnRequest("codex:m", "http://127.0.0.1:7"), Config(), {})
    assert "'model_providers.nex.base_url=\"http://127.0.0.1:7/v1\"'" in codex.line()
    assert plan_spawn(SpawnRequest("local:m"), Config(), {}).argv == []


@pytest.mark.usefixtures("rig")
@pytest.mark.parametrize("module", [claude_mod, codex_mod])
def test_doctor_reports_binary_version_and_accepted_flags(module: Any) -> None:
    model = "claude:sonnet" if module is claude_mod else "codex:gpt-5"
    checks = module.doctor(plan_spawn(SpawnRequest(model), Config(), {}))
    assert [c[0] for c in checks][:2] == ["binary", "version"]
    assert all(ok for _, ok, _ in checks), checks
    assert checks[0][2].startswith(str(FAKES))
    assert checks[1][2] == (
        "2.1.197 (Claude Code)" if module is claude_mod else "codex-cli 0.169.0"
    )


def test_doctor_says_which_flag_a_cli_does_not_take(rig: Rig) -> None:
    plan = plan_spawn(SpawnRequest("claude:sonnet"), Config(), {})
    plan.argv.append("--no-such-flag")
    checks = dict((what, (ok, detail)) for what, ok, detail in claude_mod.doctor(plan))
    ok, detail = checks["flags"]
    assert not ok and "unknown option '--no-such-flag'" in detail


def test_doctor_without_the_binary_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    checks = codex_mod.doctor(plan_spawn(SpawnRequest("codex:x"), Config(), {}))
    assert checks == [("binary", False, checks[0][2])]
    assert "npm install -g @openai/codex" in checks[0][2]


# -- `nex` on a fake CLI, as a user runs it ---------------------------------------------------
@pytest.fixture
def fake_nex(nex_env: NexEnv) -> NexEnv:
    nex_env.env["PATH"] = f"{FAKE_PATH}{os.pathsep}{nex_env.env['PATH']}"
    nex_env.env["CLAUDE_CONFIG_DIR"] = str(nex_env.root / "claude-home")
    nex_env.env["CODEX_HOME"] = str(nex_env.root / "codex-home")
    nex_env.env["ANTHROPIC_API_KEY"] = SENTINEL_KEY
    return nex_env


def test_nex_autonomous_on_claude_prints_only_the_answer_and_never_loads_litellm(
    fake_nex: NexEnv,
) -> None:
    # Through cli.main in a fresh interpreter, to see which modules a claude: run loads.
    code = (
        "import sys; from nexpy.cli import main; rc = main(sys.argv[1:]); "
        "print('litellm loaded' if 'litellm' in sys.modules else 'no litellm', file=sys.stderr);"
        "sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "-m", "claude:sonnet", "--autonomous", "hi"],
        cwd=fake_nex.work,
        env={**fake_nex.env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "echo: hi (turn 1)\n"
    assert "no litellm" in proc.stderr


def test_nex_json_events_for_codex_end_with_session_ended(fake_nex: NexEnv) -> None:
    result = fake_nex.run("-m", "codex:gpt-5", "--autonomous", "--json", "fake:tool")
    assert result.code == 0, result.stderr
    types = [e["type"] for e in result.events]
    assert types[0] == "session.started" and types[-1] == "session.ended"
    assert {"turn.started", "tool.call", "tool.result", "usage", "message"} <= set(types)
    assert result.events[0]["handler"] == "codex"
    assert "argv=codex exec --json" in result.events[0]["plan"]


def test_nex_failure_is_one_error_line_and_exit_1(fake_nex: NexEnv) -> None:
    result = fake_nex.run("-m", "claude:sonnet", "--chat", "f1", "--autonomous", "fake:fail")
    assert result.code == 1
    (line,) = result.error_lines()
    assert "claude exited with status 1" in line and "handler-stderr.log" in line
    assert result.stdout == ""
    assert fake_nex.journal("f1")[-1]["status"] == "failed"


def test_nex_missing_binary_exits_2_with_the_install_hint(fake_nex: NexEnv) -> None:
    fake_nex.env["PATH"] = str(Path(sys.executable).parent)  # python, but no claude
    result = fake_nex.run("-m", "claude:sonnet", "--autonomous", "hi")
    assert result.code == 2
    (line,) = result.error_lines()
    assert "claude CLI was not found" in line and "npm install -g @anthropic-ai/claude-code" in line


def test_nex_ctrl_c_exits_130_kills_the_cli_and_the_chat_resumes(fake_nex: NexEnv) -> None:
    log = fake_nex.root / "runs.jsonl"
    fake_nex.env["FAKE_CLI_LOG"] = str(log)
    proc = fake_nex.popen("-m", "claude:sonnet", "--chat", "c1", "--autonomous", "fake:hang")
    try:
        for _ in range(1000):
            if log.exists() and log.read_text().strip():
                break
            time.sleep(0.01)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    pid = json.loads(log.read_text().splitlines()[0])["pid"]
    assert _gone(pid)
    result = fake_nex.run("-m", "claude:sonnet", "--chat", "c1", "--autonomous", "again")
    assert result.code == 0, result.stderr
    assert result.stdout == "echo: again (turn 2)\n"


def test_nex_resume_picks_up_the_cli_conversation_of_the_latest_session(
    fake_nex: NexEnv,
) -> None:
    first = fake_nex.run("-m", "codex:gpt-5", "--autonomous", "one")
    assert first.code == 0, first.stderr
    again = fake_nex.run("-m", "codex:gpt-5", "--resume", "--autonomous", "two")
    assert again.code == 0, again.stderr
    assert again.stdout == "echo: two (turn 2)\n"
    assert " resume " in again.stderr  # announced: codex exec resume ID …
