"""The real claude and codex CLIs (installed by `make peers`), driven through `nex` as a user
runs it, against the Anthropic Messages and OpenAI Responses stubs."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers import claude as claude_mod
from handlers import codex as codex_mod
from handlers.base import STATE_FILE, STDERR_LOG
from nexpy.config import Config
from nexpy.plan import SpawnRequest, plan_spawn
from stubs.anthropic import anthropic_server
from stubs.responses import responses_server
from stubs.server import ScriptedServer
from tests.conftest import SENTINEL_KEY, NexEnv, Result

pytestmark = pytest.mark.peer

ROOT = Path(__file__).resolve().parents[2]
PEER_BIN = ROOT / ".peers" / "npm" / "node_modules" / ".bin"
CLIS = ("claude", "codex")
MODEL = {"claude": "claude:sonnet", "codex": "codex:qwen3-coder"}
TIMEOUT = 120


@pytest.fixture
def peer(nex_env: NexEnv) -> NexEnv:
    """`nex` with the real CLIs first on PATH, their homes inside the test's folder."""
    missing = [name for name in CLIS if not os.access(PEER_BIN / name, os.X_OK)]
    if missing:
        pytest.fail(f"not installed in {PEER_BIN}: {', '.join(missing)}; run `make peers`")
    nex_env.env["PATH"] = os.pathsep.join(
        [str(PEER_BIN), str(Path(sys.executable).parent), nex_env.env["PATH"]]
    )
    # TMPDIR: with bwrap on the machine, codex sandboxes its commands through a helper it links
    # into CODEX_HOME, and it refuses to do that under the temp dir, where a test's folder is;
    # then every command fails with "execvp codex-linux-sandbox". A real ~/.codex is not there.
    for var, folder in (
        ("CLAUDE_CONFIG_DIR", "claude-home"),
        ("CODEX_HOME", "codex-home"),
        ("TMPDIR", "tmp"),
    ):
        (nex_env.root / folder).mkdir()  # codex refuses a CODEX_HOME that does not exist
        nex_env.env[var] = str(nex_env.root / folder)
    nex_env.env["ANTHROPIC_API_KEY"] = SENTINEL_KEY
    return nex_env


def stub(cli: str, script: Any) -> Any:
    return anthropic_server(script) if cli == "claude" else responses_server(script)


def model_requests(srv: ScriptedServer) -> list[dict[str, Any]]:
    """The model requests a stub received (claude also probes the base URL with HEAD /)."""
    return [r for r in srv.requests if r["method"] == "POST"]


def user_texts(cli: str, body: dict[str, Any]) -> list[str]:
    """Every text a user turn of a request carries, in order."""
    items = body["messages"] if cli == "claude" else body["input"]
    texts: list[str] = []
    for item in items:
        if item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        texts += [p["text"] for p in content or () if isinstance(p.get("text"), str)]
    return texts


def tool_outputs(cli: str, body: dict[str, Any]) -> list[str]:
    """What the CLI sent back as tool results in a request."""
    if cli == "codex":
        return [
            str(i.get("output")) for i in body["input"] if i.get("type") == "function_call_output"
        ]
    out: list[str] = []
    for message in body["messages"]:
        for block in message.get("content") if isinstance(message.get("content"), list) else ():
            if block.get("type") == "tool_result":
                content = block.get("content")
                out.append(content if isinstance(content, str) else json.dumps(content))
    return out


def run(peer: NexEnv, cli: str, url: str, *args: str) -> Result:
    return peer.run("-m", MODEL[cli], "-e", url, *args, timeout=TIMEOUT)


def assert_no_key_kept(peer: NexEnv, session: str, *results: Result) -> None:
    folder = peer.home / "sessions" / session
    for path in folder.iterdir():
        if path.is_file():
            assert SENTINEL_KEY not in path.read_text(errors="replace"), path
    for result in results:
        assert SENTINEL_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_five_messages_back_to_back_resume_one_conversation(peer: NexEnv, cli: str) -> None:
    with stub(cli, {"default": {"echo": True}}) as srv:
        results = []
        for n in range(1, 6):
            result = run(peer, cli, srv.url, "--chat", "five", "--autonomous", f"message {n}")
            assert result.code == 0, result.stderr
            assert result.stdout == f"echo: message {n}\n"
            results.append(result)
            if n == 1:
                first_id = json.loads((peer.home / "sessions/five" / STATE_FILE).read_text())
        requests = model_requests(srv)
    # The CLI's own id was kept and resumed: the last request carries all five messages.
    assert json.loads((peer.home / "sessions/five" / STATE_FILE).read_text()) == first_id
    last = user_texts(cli, requests[-1]["body"])
    assert all(any(f"message {n}" == t.strip() for t in last) for n in range(1, 6)), last
    journal = [e["message"] for e in peer.journal("five") if e["kind"] == "message"]
    assert journal == [
        m
        for n in range(1, 6)
        for m in (
            {"role": "user", "content": f"message {n}"},
            {"role": "assistant", "content": f"echo: message {n}"},
        )
    ]
    # Each run announced its command and log before spawning the CLI.
    for result in results:
        assert f"nex: {cli}: " in result.stderr and STDERR_LOG in result.stderr
    if cli == "claude":
        assert requests[0]["path"] == "/v1/messages"
        assert requests[0]["headers"].get("x-api-key") == SENTINEL_KEY  # the key reached claude
    assert_no_key_kept(peer, "five", *results)


def test_codex_with_an_endpoint_reaches_the_responses_stub_at_that_url(peer: NexEnv) -> None:
    with responses_server([{"content": "from the stub"}]) as srv:
        result = run(peer, "codex", srv.base_url, "--autonomous", "hi")
        requests = model_requests(srv)
    assert result.code == 0, result.stderr
    assert result.stdout == "from the stub\n"
    (request,) = requests
    assert request["path"] == "/v1/responses"
    assert request["body"]["model"] == "qwen3-coder" and request["body"]["stream"] is True
    assert "authorization" not in {k.lower() for k in request["headers"]}  # no env_key set
    assert f'model_providers.nex.base_url="{srv.url}"' in result.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_a_tool_round_trip(peer: NexEnv, cli: str) -> None:
    if cli == "claude":
        call = {"name": "Bash", "arguments": {"command": "echo tool-ran-$((6*7))"}}
    else:
        call = {"name": "exec_command", "arguments": {"cmd": "echo tool-ran-$((6*7))"}}
    script = [{"tool_calls": [call]}, {"content": "the tool ran"}]
    with stub(cli, script) as srv:
        result = run(peer, cli, srv.url, "--autonomous", "--json", "run the probe")
        requests = model_requests(srv)
    assert result.code == 0, result.stderr
    events = result.events
    (tool_call,) = [e for e in events if e["type"] == "tool.call"]
    (tool_result,) = [e for e in events if e["type"] == "tool.result"]
    assert tool_call["name"] == ("Bash" if cli == "claude" else "bash")
    assert "tool-ran-$((6*7))" in tool_call["arguments"]["command"]
    assert tool_result["ok"] and "tool-ran-42" in tool_result["output"]
    assert tool_result["id"] == tool_call["id"]
    assert any("tool-ran-42" in out for out in tool_outputs(cli, requests[-1]["body"]))
    final = [e for e in events if e["type"] == "message" and e.get("final")]
    assert [e["content"] for e in final] == ["the tool ran"]
    assert events[-1]["type"] == "session.ended" and events[-1]["status"] == "completed"


def test_claude_writes_a_file_in_the_work_dir_with_its_write_tool(peer: NexEnv) -> None:
    target = peer.work / "made-by-claude.txt"
    call = {"name": "Write", "arguments": {"file_path": str(target), "content": "written\n"}}
    with anthropic_server([{"tool_calls": [call]}, {"content": "wrote it"}]) as srv:
        result = run(peer, "claude", srv.url, "--autonomous", "write the file")
    assert result.code == 0, result.stderr
    assert result.stdout == "wrote it\n"
    assert target.read_text() == "written\n"


@pytest.mark.parametrize("cli", CLIS)
def test_a_failing_server_ends_in_one_clear_line_exit_1_and_a_log(peer: NexEnv, cli: str) -> None:
    # claude would retry a 500 ten times over ~3 minutes, codex five times: tell claude not to,
    # and give codex an error it does not retry.
    peer.env["CLAUDE_CODE_MAX_RETRIES"] = "0"
    status = 500 if cli == "claude" else 400
    body = {"error": {"message": "the stub refuses", "type": "invalid_request_error"}}
    if cli == "claude":
        body = {"type": "error", "error": {"type": "api_error", "message": "the stub refuses"}}
    with stub(cli, {"default": {"fault": "status", "status": status, "body": body}}) as srv:
        result = run(peer, cli, srv.url, "--chat", "broken", "--autonomous", "hi")
    assert result.code == 1, result.stderr
    (line,) = result.error_lines()
    log = peer.home / "sessions" / "broken" / STDERR_LOG
    assert f"{cli} exited with status 1" in line
    assert "the stub refuses" in line
    assert str(log) in line
    text = log.read_text()
    assert f"=== {cli} exited with status 1" in text
    if cli == "codex":
        assert "Reading additional input from stdin" in text  # what codex wrote on stderr
    assert result.stdout == ""
    assert peer.journal("broken")[-1]["status"] == "failed"
    assert_no_key_kept(peer, "broken", result)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("cli", CLIS)
def test_killing_the_cli_mid_turn_is_one_line_exit_1_and_the_next_turn_works(
    peer: NexEnv, cli: str
) -> None:
    script = [
        {"content": "first answer"},
        {"fault": "hang", "after_chunks": 3, "content": "a partial answer that never ends"},
    ]
    with stub(cli, {"replies": script, "default": {"echo": True}}) as srv:
        first = run(peer, cli, srv.url, "--chat", "killed", "--autonomous", "one")
        assert first.code == 0, first.stderr
        proc = peer.popen(
            "-m", MODEL[cli], "-e", srv.url, "--chat", "killed", "--autonomous", "two"
        )
        try:
            deadline = time.monotonic() + 60
            while len(model_requests(srv)) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            (child,) = _children(proc.pid)
            os.kill(child, signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, err
        (line,) = [x for x in err.splitlines() if x.startswith("nex: error:")]
        assert f"{cli} was killed by SIGKILL" in line and STDERR_LOG in line
        after = run(peer, cli, srv.url, "--chat", "killed", "--autonomous", "three")
        requests = model_requests(srv)
    assert after.code == 0, after.stderr
    assert after.stdout == "echo: three\n"
    # Resumed, not restarted: the conversation still holds the first message.
    assert "one" in [t.strip() for t in user_texts(cli, requests[-1]["body"])]
    assert "no longer knows" not in after.stderr


@pytest.mark.parametrize("module", [claude_mod, codex_mod])
def test_doctor_finds_the_cli_and_it_accepts_every_flag_nex_passes(
    peer: NexEnv, module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in peer.env.items():
        monkeypatch.setenv(key, value)
    cli = "claude" if module is claude_mod else "codex"
    with stub(cli, []) as srv:
        plan = plan_spawn(SpawnRequest(MODEL[cli], srv.url), Config(), {})
        checks = module.doctor(plan)
    assert all(ok for _, ok, _ in checks), checks
    names = [what for what, _, _ in checks]
    assert names[:2] == ["binary", "version"] and names[-1] == "endpoint"
    assert checks[0][2] == str(PEER_BIN / cli)
    assert ("2.1.197" if cli == "claude" else "0.169.0") in checks[1][2]


def _processes_of(peer: NexEnv) -> dict[int, str]:
    """Live processes started for this test (they inherit its CLAUDE_CONFIG_DIR): pid -> argv."""
    marker = f"CLAUDE_CONFIG_DIR={peer.env['CLAUDE_CONFIG_DIR']}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                if argv:  # a zombie has none: it has exited
                    found[int(proc.name)] = argv.decode(errors="replace")[:120]
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def _no_stray_cli(peer: NexEnv) -> Iterator[None]:
    """A test that leaves a CLI running (a hung turn nex failed to kill) fails here. codex
    starts a shell-snapshot job in a session of its own that may finish after codex exits:
    a few seconds of grace."""
    yield
    deadline = time.monotonic() + 10
    while (left := _processes_of(peer)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes outlived the test: {left}"
