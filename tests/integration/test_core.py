"""Issue 2 acceptance: nex as a subprocess against the scripted stub on a real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stubs.oai import stub_server
from tests.conftest import SENTINEL_KEY, NexEnv

pytestmark = pytest.mark.timeout(120)


def _base(url: str) -> list[str]:
    return ["-m", "local:stub-model", "-e", url]


def _user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def _assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def test_nex_two_message_roundtrip(nex_env: NexEnv) -> None:
    """Two messages in one session, each a separate process: both answered, nothing rejected."""
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        first = nex_env.run(*_base(srv.url), "--chat", "two", "--autonomous", "first question")
        second = nex_env.run(*_base(srv.url), "--chat", "two", "--autonomous", "second question")
        assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
        assert first.stdout.strip() == "echo: first question"
        assert second.stdout.strip() == "echo: second question"
        assert srv.rejections == []
        # The second request carries the whole first exchange, in order.
        roles = [m["role"] for m in srv.requests[1]["messages"]]
        assert roles == ["system", "user", "assistant", "user"]
        assert _user_texts(srv.requests[1]) == ["first question", "second question"]


def _tool_round(n: int) -> list[dict]:
    return [
        {"tool_calls": [{"name": "bash", "arguments": {"command": f"echo round-{n}"}}]},
        {
            "tool_calls": [
                {"name": "write_file", "arguments": {"path": f"f{n}.txt", "content": f"n={n}"}},
                {"name": "read_file", "arguments": {"path": f"f{n}.txt"}},
            ]
        },
        {"echo": True},
    ]


def _five_messages(nex_env: NexEnv, extra: list[str]) -> tuple[list[dict], list]:
    script = {"replies": [r for n in range(5) for r in _tool_round(n)]}
    with stub_server(script, strict=True) as srv:
        for n in range(5):
            result = nex_env.run(
                *_base(srv.url), "--chat", "five", *extra, "--autonomous", f"message {n}"
            )
            assert result.code == 0, result.stderr
            assert result.stdout.strip().startswith(f"echo: message {n}")
        return srv.requests, srv.rejections


def test_five_messages_back_to_back_with_tool_rounds(nex_env: NexEnv) -> None:
    requests, rejections = _five_messages(nex_env, [])
    assert rejections == []
    assert len(requests) == 15
    last = requests[-1]["messages"]
    assert sum(1 for m in last if m["role"] == "tool") == 15  # 3 results per message
    assert "round-4" in "".join(str(m.get("content")) for m in last)
    assert (nex_env.work / "f4.txt").read_text() == "n=4"


def test_five_messages_with_a_context_warning_active(nex_env: NexEnv) -> None:
    # Tools and system prompt take ~900 tokens and a quarter of the window is kept for the
    # reply: at 2150 the history room is ~600 tokens, which the last request fills past the
    # warning level (75%) without needing compaction.
    requests, rejections = _five_messages(nex_env, ["--context-window", "2150"])
    assert rejections == []
    last = requests[-1]["messages"]
    # The warning is appended once, to the newest message of the request that first carried it
    # (a prompt cache keeps everything before it), never pushed as its own message and never
    # into the system prompt; later requests send that message with the same bytes.
    carrying = [m for m in last if "context window is" in str(m.get("content"))]
    assert len(carrying) == 1 and carrying[0]["role"] in ("user", "tool"), carrying
    assert not str(carrying[0]["content"]).lstrip().startswith("context window is")
    first = next(r for r in requests if carrying[0] in r["messages"])
    assert first["messages"][-1] == carrying[0]
    assert [m["role"] for m in last].count("system") == 1


def test_crash_in_a_tool_call_resumes_with_chat(nex_env: NexEnv) -> None:
    script = {
        "replies": [
            {"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 60"}}]},
            {"echo": True},
        ]
    }
    with stub_server(script, strict=True) as srv:
        proc = nex_env.popen(
            *_base(srv.url), "--chat", "crash", "--autonomous", "run the slow thing"
        )
        journal = nex_env.home / "sessions" / "crash" / "journal.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if journal.exists() and '"tool_calls"' in journal.read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the tool call never reached the journal")
        time.sleep(0.3)  # inside the tool now
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

        resumed = nex_env.run(*_base(srv.url), "--chat", "crash", "--autonomous", "and now?")
        assert resumed.code == 0, resumed.stderr
        assert resumed.stdout.strip() == "echo: and now?"
        assert srv.rejections == []
        tool_msgs = [m for m in srv.requests[-1]["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in tool_msgs] == ["[no result: interrupted]"]

    entries = nex_env.journal("crash")
    messages = [json.dumps(e["message"], sort_keys=True) for e in entries if e["kind"] == "message"]
    assert len(messages) == len(set(messages)), "a journal entry was written twice"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_error_line(result, code: int, needle: str) -> None:
    assert result.code == code, result.stderr
    _assert_no_traceback(result.stderr)
    errors = result.error_lines()
    assert len(errors) == 1, result.stderr
    assert needle in errors[0], errors[0]
    assert result.stdout == ""


def test_bad_input_unknown_prefix(nex_env: NexEnv) -> None:
    _one_error_line(
        nex_env.run("-m", "lcoal:qwen", "--autonomous", "hi"), 2, "did you mean 'local'"
    )


def test_bad_input_malformed_config(nex_env: NexEnv) -> None:
    nex_env.write_config("model = \n[oops", local=True)
    _one_error_line(nex_env.run("--autonomous", "hi"), 2, "not valid TOML")


def test_bad_input_unknown_approval_mode(nex_env: NexEnv) -> None:
    nex_env.write_config('approval = "sometimes"', local=True)
    result = nex_env.run("--autonomous", "hi")
    _one_error_line(result, 2, "approval: Input should be 'ask', 'auto-edit' or 'yolo'")


def test_bad_input_endpoint_neither_url_nor_name(nex_env: NexEnv) -> None:
    result = nex_env.run("-m", "local:x", "-e", "mybox", "--autonomous", "hi")
    _one_error_line(result, 2, "neither a URL nor a configured endpoint")


def test_bad_input_connection_refused(nex_env: NexEnv) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    _one_error_line(nex_env.run(*_base(url), "--autonomous", "hi"), 1, "connection refused")


@pytest.mark.parametrize(
    ("status", "needle"), [(401, "refused the credentials"), (404, "not found")]
)
def test_bad_input_http_status(nex_env: NexEnv, status: int, needle: str) -> None:
    with stub_server({"replies": [{"fault": "status", "status": status}]}) as srv:
        result = nex_env.run(*_base(srv.url), "--autonomous", "hi")
        _one_error_line(result, 1, needle)
        assert len(srv.requests) == 1, "a 401/404 must not be retried"


def test_bad_input_locked_session(nex_env: NexEnv) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from nexpy.session import Session;"
            "s = Session.open_or_create(Path(sys.argv[1]), 'busy'); s.lock();"
            "print('locked', flush=True); time.sleep(60)",
            str(nex_env.home),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = nex_env.run("-m", "stub:demo", "--chat", "busy", "--autonomous", "hi")
        _one_error_line(result, 2, "in use")
    finally:
        holder.kill()
        holder.wait()


def test_cli_endpoint_beats_configured_default(nex_env: NexEnv) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    nex_env.write_config(f'model = "local:stub-model"\nendpoint = "{dead}"\n')
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        result = nex_env.run("-e", srv.url, "--autonomous", "hello")
        assert result.code == 0, result.stderr
        assert result.stdout.strip() == "echo: hello"
        plan = next(line for line in result.stderr.splitlines() if line.startswith("plan:"))
        assert f"endpoint={srv.url} (from -e)" in plan
        assert "model=local:stub-model (from ~/.config/nexpy/config.toml)" in plan


def test_sentinel_key_never_in_journal_stderr_or_events(nex_env: NexEnv) -> None:
    nex_env.env["OPENAI_API_KEY"] = SENTINEL_KEY
    script = {
        "replies": [
            {
                "tool_calls": [
                    {"name": "bash", "arguments": {"command": "env; echo $OPENAI_API_KEY"}}
                ]
            },
            {"echo": True},
        ]
    }
    with stub_server(script, strict=True) as srv:
        result = nex_env.run(
            "-m", "openai:gpt-test", "-e", srv.url, "--chat", "keys", "--json", "--autonomous", "hi"
        )
        assert result.code == 0, result.stderr
        # The key did go where it belongs: to the endpoint the user named.
        assert srv.rejections == []
    journal = (nex_env.home / "sessions" / "keys" / "journal.jsonl").read_text()
    for where, text in (("journal", journal), ("stderr", result.stderr), ("events", result.stdout)):
        assert SENTINEL_KEY not in text, f"the key leaked into the {where}"
    outputs = nex_env.home / "sessions" / "keys" / "tool-outputs"
    for path in outputs.glob("*"):
        assert SENTINEL_KEY not in path.read_text()


def test_json_events_end_with_session_ended(nex_env: NexEnv) -> None:
    result = nex_env.run("-m", "stub:demo", "--json", "--autonomous", "do the demo")
    assert result.code == 0, result.stderr
    events = result.events
    assert events[0]["type"] == "session.started"
    assert events[-1]["type"] == "session.ended"
    assert events[-1]["status"] == "completed"
    assert {"tool.call", "tool.result", "message", "usage", "context"} <= {
        e["type"] for e in events
    }
    assert all({"type", "session", "ts"} <= e.keys() for e in events)


def test_max_turns_asks_for_a_summary_and_exits_3(nex_env: NexEnv) -> None:
    loop = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo again"}}]}
    script = {"replies": [loop, loop, {"content": "Summary: looped twice."}]}
    with stub_server(script, strict=True) as srv:
        result = nex_env.run(*_base(srv.url), "--max-turns", "2", "--json", "--autonomous", "loop")
        assert result.code == 3, result.stderr
        assert "tools" not in srv.requests[-1], "the summary request must offer no tools"
        assert srv.rejections == []
    ended = result.events[-1]
    assert ended["type"] == "session.ended" and ended["exit_reason"] == "max_turns"
    assert any(e["type"] == "message" and "Summary" in e["content"] for e in result.events)


def test_help_and_version_do_not_import_litellm() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from nexpy.cli import main\n"
        "out = io.StringIO()\n"
        "for argv in (['--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print('LITELLM' if 'litellm' in sys.modules else 'CLEAN')\n"
        "print(out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    first, _, help_text = proc.stdout.partition("\n")
    assert first == "CLEAN", proc.stdout + proc.stderr
    assert "model" in help_text and "endpoint" in help_text
    assert "executor" not in help_text.lower()
    assert "nex 0." in help_text


def test_interrupt_exits_130_and_session_resumes(nex_env: NexEnv) -> None:
    script = {
        "replies": [
            {"tool_calls": [{"name": "bash", "arguments": {"command": "sleep 60"}}]},
            {"echo": True},
        ]
    }
    with stub_server(script, strict=True) as srv:
        proc = nex_env.popen(*_base(srv.url), "--chat", "intr", "--autonomous", "slow")
        deadline = time.monotonic() + 30
        while len(srv.requests) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        resumed = nex_env.run(*_base(srv.url), "--chat", "intr", "--autonomous", "next")
        assert resumed.code == 0 and resumed.stdout.strip() == "echo: next", resumed.stderr
        assert srv.rejections == []
    kinds = [e["kind"] for e in nex_env.journal("intr")]
    assert kinds.count("end") == 2


def test_work_dir_flag_and_paths_outside_are_refused(nex_env: NexEnv, tmp_path: Path) -> None:
    script = {
        "replies": [
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "/etc/passwd"}}]},
            {"content": "done"},
        ]
    }
    with stub_server(script, strict=True) as srv:
        result = nex_env.run(*_base(srv.url), "--json", "--autonomous", "read it")
        assert result.code == 0, result.stderr
    tool_result = next(e for e in result.events if e["type"] == "tool.result")
    assert tool_result["ok"] is False and "outside the work dir" in tool_result["output"]


def test_json_failure_before_the_run_still_ends_with_session_ended(nex_env: NexEnv) -> None:
    result = nex_env.run("-m", "lcoal:x", "--json", "--autonomous", "hi")
    assert result.code == 2
    events = result.events
    assert [e["type"] for e in events] == ["error", "session.ended"]
    assert events[0]["kind"] == "usage" and "did you mean" in events[0]["message"]


def test_sessions_lists_runs_newest_first(nex_env: NexEnv) -> None:
    assert nex_env.run("-m", "stub:demo", "--chat", "older", "--autonomous", "one").code == 0
    assert nex_env.run("-m", "stub:demo", "--chat", "newer", "--autonomous", "two").code == 0
    listing = nex_env.run("sessions")
    assert listing.code == 0
    ids = [line.split()[0] for line in listing.stdout.splitlines()]
    assert ids == ["newer", "older"]
    assert "ended:completed" in listing.stdout and "stub:demo" in listing.stdout


def test_a_stuck_loop_is_nudged_then_ends_with_exit_3(nex_env: NexEnv) -> None:
    """Issue 15 item 7: the same call 3 times gets a nudge, the 4th ends the run (exit 3)."""
    same = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo same"}}]}
    script = {"replies": [same] * 4, "default": {"content": "summary: I was stuck"}}
    with stub_server(script, strict=True) as srv:
        result = nex_env.run(*_base(srv.url), "--json", "--autonomous", "loop please")
    assert result.code == 3, result.stderr
    assert srv.rejections == []
    ended = result.events[-1]
    assert (ended["type"], ended["status"], ended["exit_reason"]) == (
        "session.ended",
        "limit",
        "loop",
    )
    results = [e for e in result.events if e["type"] == "tool.result"]
    assert len(results) == 4
    assert "[nex]" not in results[1]["output"]
    assert "same bash call with the same arguments 3 times" in results[2]["output"]
    assert (
        results[3]["ok"] is False and "repeated the same bash call 4 times" in results[3]["output"]
    )
    # The 4th call never ran: bash ran three times.
    assert sum("same\n" in r["output"] for r in results) == 3
    # The wrap-up asked for a summary without tools.
    assert "tools" not in srv.requests[-1] or not srv.requests[-1]["tools"]
    assert "nex: error: the model repeated the same bash call 4 times" in result.stderr
