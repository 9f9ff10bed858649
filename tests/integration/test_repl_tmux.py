"""The REPL in a real terminal: `nex` runs inside tmux against the strict scripted stub.

Each test starts its own tmux server (a unique socket) with a 120x40 window, types into it with
`send-keys` like a person would, and reads the screen with `capture-pane`. The pane runs
`nex ...; echo EXIT=$?` so the exit code shows up on screen.
"""

from __future__ import annotations

import random
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stubs.oai import StubServer, stub_server
from tests.conftest import NEX, NexEnv

pytestmark = [
    pytest.mark.tmux,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.timeout(120),
]

WAIT = 30.0  # generous: the first request also waits for litellm's import (~3 s)
TOOLBAR = "│ /help"  # the bottom toolbar, drawn only while the prompt is reading


class Pane:
    """One tmux pane running `nex`, on a tmux server of its own."""

    def __init__(self, socket: str, env: dict[str, str]) -> None:
        self.socket = socket
        self.socket_path: Path | None = None
        self.env = env

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def type(self, text: str) -> None:
        """Type `text` literally (no key names)."""
        self.tmux("send-keys", "-t", "nex", "-l", text)

    def keys(self, *names: str) -> None:
        """Press keys by tmux name: Enter, C-c, C-d, Escape."""
        self.tmux("send-keys", "-t", "nex", *names)

    def send(self, text: str) -> None:
        """Type a message and press Enter."""
        self.type(text)
        self.keys("Enter")

    def paste(self, text: str) -> None:
        """Paste `text` the way a terminal does when the application asked for bracketed paste."""
        self.tmux("set-buffer", "-b", "nexpaste", text)
        self.tmux("paste-buffer", "-p", "-d", "-b", "nexpaste", "-t", "nex")

    def screen(self) -> str:
        """The whole pane, scrollback included, wrapped lines joined, trailing blanks cut."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "nex")
        return "\n".join(line.rstrip() for line in text.split("\n"))

    def styled(self) -> str:
        """The visible pane with its colours and attributes, as escape sequences."""
        return self.tmux("capture-pane", "-p", "-e", "-t", "nex")

    def wait(
        self, check: Callable[[str], bool] | str, what: str = "", timeout: float = WAIT
    ) -> str:
        """Poll the screen until `check` holds (or the text appears); fail showing the screen."""
        test = (lambda s: check in s) if isinstance(check, str) else check
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if test(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or check!r}; screen:\n{text}")
            time.sleep(0.05)

    def wait_prompt(self) -> str:
        """Wait until the prompt is reading input (its toolbar is drawn only then)."""
        return self.wait(lambda s: TOOLBAR in s, "the prompt")


@pytest.fixture
def repl(nex_env: NexEnv) -> Iterator[Callable[[StubServer], Pane]]:
    """Start `nex` against a stub in a fresh tmux server; kill the server afterwards."""
    panes: list[Pane] = []

    def start(srv: StubServer, *extra: str, ask: bool = False) -> Pane:
        """`ask`: leave out `--yes`, so mutating tools ask first."""
        pane = Pane(f"nex-test-{secrets.token_hex(4)}", nex_env.env)
        panes.append(pane)
        argv = [NEX, "-m", "local:stub-model", "-e", srv.url, *([] if ask else ["--yes"]), *extra]
        script = f"{shlex.join(argv)}; echo EXIT=$?; sleep 60"
        # A long scrollback: the stress test reads hundreds of answers back.
        pane.tmux(
            "set-option", "-g", "history-limit", "50000", ";",
            "new-session", "-d", "-s", "nex", "-x", "120", "-y", "40",
            "-c", str(nex_env.work), "/bin/sh", "-c", script,
        )  # fmt: skip
        pane.socket_path = Path(pane.tmux("display-message", "-p", "#{socket_path}").strip())
        pane.wait_prompt()
        return pane

    yield start
    for pane in panes:
        subprocess.run(["tmux", "-L", pane.socket, "kill-server"], capture_output=True, timeout=10)
        # tmux leaves its socket file behind; one per test would pile up in /tmp.
        if pane.socket_path is not None:
            pane.socket_path.unlink(missing_ok=True)


def _messages(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in body["messages"] if m["role"] != "system"]


def test_two_messages_are_answered_and_the_second_carries_the_first(repl) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("first question")
        pane.wait("echo: first question")
        pane.wait_prompt()
        pane.send("second question")
        screen = pane.wait("echo: second question")
        assert "echo: first question" in screen
        assert srv.rejections == []
        assert len(srv.requests) == 2
        assert _messages(srv.requests[1]) == [
            ("user", "first question"),
            ("assistant", "echo: first question"),
            ("user", "second question"),
        ]


def test_ctrl_c_cancels_a_streaming_answer_and_the_session_goes_on(repl) -> None:
    slow = {"content": "abcdefghij" * 4, "chunk_delay": 0.3, "chunk_size": 1}  # 40 chunks, 12 s
    with stub_server({"replies": [slow], "default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("tell me slowly")
        pane.wait(lambda s: "abc" in s.partition("› tell me slowly")[2], "the answer to stream")
        pane.keys("C-c")
        pane.wait("^C (cancelled)")
        pane.wait_prompt()
        pane.send("after the cancel")
        screen = pane.wait("echo: after the cancel")
        assert "abcdefghij" * 4 not in screen.replace("\n", "")  # the answer never finished
        assert srv.rejections == []
        assert len(srv.requests) == 2
        history = _messages(srv.requests[1])
        assert history[0] == ("user", "tell me slowly")
        role, partial = history[1]
        assert role == "assistant" and partial.startswith("abc") and "interrupted" in partial
        assert history[-1] == ("user", "after the cancel")


def test_ctrl_d_at_an_empty_prompt_exits_0(repl, nex_env: NexEnv) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv, "--chat", "bye")
        pane.keys("C-d")
        pane.wait("EXIT=0")
    ended = [e for e in nex_env.journal("bye") if e["kind"] == "end"]
    assert [(e["status"], e["exit_reason"]) for e in ended] == [("completed", "user_exit")]


def test_unknown_slash_command_is_refused_and_never_sent(repl) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("/frobnicate now")
        pane.wait("unknown command /frobnicate; /help lists them")
        pane.wait_prompt()
        pane.send("/quit")
        pane.wait("EXIT=0")
        assert srv.requests == []


def test_double_slash_sends_the_text_with_one_slash(repl) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("//etc/hosts is odd")
        pane.wait("echo: /etc/hosts is odd")
        assert _messages(srv.requests[0]) == [("user", "/etc/hosts is odd")]


def test_a_bracketed_paste_keeps_its_newlines_and_does_not_submit(repl) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.paste("line one\nline two")
        pane.wait("  line two", "the pasted second line in the prompt")
        assert srv.requests == []  # the paste alone sent nothing
        pane.keys("Escape", "Enter")  # Alt-Enter adds a line too
        pane.type("line three")
        pane.keys("Enter")
        pane.wait("echo: line one", "the answer")
        pane.wait_prompt()
        assert _messages(srv.requests[0]) == [("user", "line one\nline two\nline three")]


def test_a_markdown_answer_is_rendered_once_complete(repl) -> None:
    answer = "Result: **bold** and `code`\n\n- first item\n- second item"
    with stub_server({"replies": [{"content": answer}]}, strict=True) as srv:
        pane = repl(srv)
        pane.send("format it")
        screen = pane.wait("• second item", "the rendered list")
        after = screen.split("› format it", 1)[1]
        assert "Result: bold and code" in after
        assert "**" not in after and "- first item" not in after  # the raw stream was erased


def test_clear_starts_a_fresh_conversation(repl, nex_env: NexEnv) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv, "--chat", "fresh")
        pane.send("remember me")
        pane.wait("echo: remember me")
        pane.wait_prompt()
        pane.send("/clear")
        pane.wait("started a fresh conversation")
        pane.wait_prompt()
        pane.send("who am I")
        pane.wait("echo: who am I")
        assert _messages(srv.requests[1]) == [("user", "who am I")]
        assert srv.rejections == []
    kinds = [e["kind"] for e in nex_env.journal("fresh")]
    assert "compaction" in kinds


def test_compact_shrinks_now_and_the_next_message_is_accepted(repl, nex_env: NexEnv) -> None:
    big = {"tool_calls": [{"name": "bash", "arguments": {"command": "seq 1 3000"}}]}
    script = {"replies": [big, {"echo": True}], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, "--chat", "squeeze")
        pane.send("count a lot")
        pane.wait("echo: count a lot")
        pane.wait_prompt()
        pane.send("/compact")
        pane.wait("compact")
        pane.wait_prompt()
        pane.send("still there?")
        pane.wait("echo: still there?")
        assert srv.rejections == []
        last = srv.requests[-1]["messages"]
        assert any(m["role"] == "user" and m["content"] == "count a lot" for m in last)
    assert "compaction" in [e["kind"] for e in nex_env.journal("squeeze")]


def test_a_failed_request_prints_one_error_line_and_the_repl_goes_on(repl) -> None:
    refused = {"fault": "status", "status": 401}
    with stub_server({"replies": [refused], "default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("first try")
        screen = pane.wait("error: HTTP 401")
        assert "Traceback" not in screen
        pane.wait_prompt()
        pane.send("second try")
        # The unanswered first message stays in the history; normalize merges the two turns.
        pane.wait(lambda s: "second try" in s.partition("echo: first try")[2], "the answer")
        assert srv.rejections == []


def test_the_status_line_shows_the_sandbox_and_opting_in_confines_bash(
    repl, nex_env: NexEnv
) -> None:
    """The REPL runs bash unconfined until the user opts in, and says which in its status line."""
    outside = nex_env.root / "outside.txt"  # beside the work dir
    attack = {"tool_calls": [{"name": "bash", "arguments": {"command": f"echo x > {outside}"}}]}
    with stub_server({"default": {"echo": True}}) as srv:
        repl(srv).wait("│ sandbox off │", "the status line")
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is not installed (make test installs bubblewrap)")
    with stub_server({"replies": [attack, {"content": "tried"}]}) as srv:
        pane = repl(srv, "--sandbox", "workspace-write")
        pane.wait("│ sandbox workspace-write │", "the status line")
        pane.send("write outside")
        pane.wait("tried")
    assert not outside.exists()


# -- typeahead: nothing typed while an answer finishes is ever lost ----------------------------
STRESS_TRIALS = 200


def _last_user(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def _wait_requests(
    pane: Pane, srv: StubServer, count: int, what: str, timeout: float = WAIT
) -> None:
    """Wait until the stub has `count` requests; a lost Enter leaves a message unsent."""
    deadline = time.monotonic() + timeout
    while len(srv.requests) < count:
        if time.monotonic() > deadline:
            seen = [_last_user(r) for r in srv.requests[-3:]]
            raise AssertionError(
                f"{what}: the stub has {len(srv.requests)} requests, the last "
                f"for {seen}; expected {count}; screen:\n{pane.screen()}"
            )
        time.sleep(0.005)


@pytest.mark.timeout(600)  # ~0.6 s a trial, plus litellm's import on a busy machine
def test_messages_typed_as_answers_end_are_never_lost_or_merged(repl) -> None:
    """200 trials in one session: the next message is typed 0-500 ms after the request for the
    answer reached the stub. The answer streams for ~150 ms (7 pieces, 20 ms apart), so the keys
    land while it streams (and are queued), as its markdown is re-rendered, and at the idle
    prompt; every other turn runs a tool first. Each message must reach the stub once, in
    order, and each answer be on screen once."""
    rng = random.Random(16)
    replies: list[dict] = []
    expected_requests: list[str] = []  # the user message each request answers
    for i in range(STRESS_TRIALS + 1):
        if i % 2 == 0:
            call = {"name": "bash", "arguments": {"command": f"echo tool-{i}"}}
            replies.append({"tool_calls": [call]})
            expected_requests.append(f"question {i}")
        answer = f"**reply-{i}** done\n\n- item {i}"
        replies.append({"content": answer, "chunk_size": 4, "chunk_delay": 0.02})
        expected_requests.append(f"question {i}")
    with stub_server({"replies": replies}, strict=True) as srv:
        pane = repl(srv, "--context-window", "10000000")
        pane.send("question 0")
        for i in range(STRESS_TRIALS):
            # The request that streams answer i has arrived: type the next message around its end.
            upto = max(k for k, q in enumerate(expected_requests) if q == f"question {i}") + 1
            _wait_requests(pane, srv, upto, f"trial {i}")
            time.sleep(rng.uniform(0.0, 0.5))
            pane.send(f"question {i + 1}")
        _wait_requests(pane, srv, len(expected_requests), "the last message")
        pane.wait(f"reply-{STRESS_TRIALS} done", "the last answer")
        screen = pane.wait_prompt()
        assert srv.rejections == []
        assert [_last_user(r) for r in srv.requests] == expected_requests
        users = [m["content"] for m in srv.requests[-1]["messages"] if m["role"] == "user"]
        assert users == [f"question {i}" for i in range(STRESS_TRIALS + 1)]
        for i in range(STRESS_TRIALS + 1):
            shown = len(re.findall(rf"reply-{i}\b", screen))
            assert shown == 1, f"answer {i} is on screen {shown} times; screen:\n{screen}"
        assert "**reply-" not in screen  # every raw stream was replaced by its rendering


# -- queued messages ----------------------------------------------------------------------------
# 15 words, one every 0.4 s: 6 s of streaming, time enough to type and queue on a busy machine.
SLOW = {
    "content": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen",
    "chunk_delay": 0.4,
}


def test_a_message_submitted_while_an_answer_streams_is_queued_then_sent(repl) -> None:
    with stub_server({"replies": [SLOW], "default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("first")
        pane.wait(lambda s: "one" in s.partition("› first")[2], "the answer to stream")
        pane.send("second")
        pane.wait("queued › second", "the queued message in the status line")
        assert len(srv.requests) == 1  # held back while the first answer streams
        line = next(row for row in pane.styled().split("\n") if "queued › second" in row)
        assert re.search(r"\x1b\[(?:[0-9;]*;)?2[;m]", line), f"not dimmed: {line!r}"
        screen = pane.wait("echo: second")
        pane.wait_prompt()
        assert srv.rejections == []
        assert _messages(srv.requests[1]) == [
            ("user", "first"),
            ("assistant", SLOW["content"]),
            ("user", "second"),
        ]
        # Shown in order: the whole first answer, then the queued message, then its answer.
        after = screen.partition("› first")[2]
        assert (
            after.index("fourteen fifteen") < after.index("› second") < after.index("echo: second")
        )
        assert "queued ›" not in pane.screen()


@pytest.mark.parametrize(("key", "shown"), [("Escape", "Esc"), ("C-c", "^C")])
def test_cancelling_an_answer_puts_the_queued_text_back_in_the_prompt(
    repl, key: str, shown: str
) -> None:
    with stub_server({"replies": [SLOW], "default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("first")
        pane.wait(lambda s: "one" in s.partition("› first")[2], "the answer to stream")
        pane.send("not yet")
        pane.wait("queued › not yet", "the queued message")
        pane.keys(key)
        pane.wait(f"{shown} (cancelled)")
        screen = pane.wait_prompt()
        prompt_line = [row for row in screen.split("\n") if row.startswith("›")][-1]
        assert prompt_line == "› not yet"  # back for editing, not sent
        assert "queued ›" not in screen
        time.sleep(1.0)
        assert len(srv.requests) == 1
        pane.type(", now")
        pane.keys("Enter")
        pane.wait("echo: not yet, now")
        assert srv.rejections == []
        assert _messages(srv.requests[1])[-1] == ("user", "not yet, now")


def test_the_approval_question_ignores_keys_typed_before_it_was_drawn(
    repl, nex_env: NexEnv
) -> None:
    call = {"name": "bash", "arguments": {"command": "echo ran > ran.txt"}}
    script = {
        "replies": [{"tool_calls": [call], "delay": 2.0}, {"content": "done"}],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.send("do it")
        pane.send("y")  # typed before the question: the next message, not its answer
        pane.wait("[y/N/a]", "the approval question")
        time.sleep(1.0)
        assert not (nex_env.work / "ran.txt").exists()
        assert len(srv.requests) == 1  # the question still waits for its answer
        pane.send("n")
        pane.wait("echo: y", "the queued message, sent after the turn")
        assert not (nex_env.work / "ran.txt").exists()
        assert srv.rejections == []
        assert [_last_user(r) for r in srv.requests] == ["do it", "do it", "y"]


def test_an_edit_shows_its_diff_before_the_approval_question(repl, nex_env: NexEnv) -> None:
    target = nex_env.work / "notes.txt"
    target.write_text("one\ntwo\nthree\n")
    call = {"name": "edit_file", "arguments": {"path": "notes.txt", "old_string": "two",
                                               "new_string": "TWO"}}  # fmt: skip
    script = {"replies": [{"tool_calls": [call]}], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.send("shout the second line")
        screen = pane.wait("[y/N/a]")
        question = screen.rindex("[y/N/a]")
        assert screen.rindex("-two") < question and screen.rindex("+TWO") < question
        assert screen.rindex("+++ b/notes.txt") < question
        # Colored on a terminal: removals red, additions green.
        styled = pane.styled()
        assert re.search(r"\x1b\[(?:[0-9;]*;)?31m-two", styled), styled
        assert re.search(r"\x1b\[(?:[0-9;]*;)?32m\+TWO", styled), styled
        assert "a always edit_file in this session" in screen
        assert "p always" not in screen.partition("shout the second line")[2]  # bash only
        assert target.read_text() == "one\ntwo\nthree\n"  # nothing written before the answer
        pane.send("y")
        pane.wait("echo: shout the second line")
        assert target.read_text() == "one\nTWO\nthree\n"


def test_diff_and_undo_in_the_repl(repl, nex_env: NexEnv) -> None:
    target = nex_env.work / "plan.txt"
    target.write_text("draft\n")
    call = {"name": "write_file", "arguments": {"path": "plan.txt", "content": "final\n"}}
    script = {"replies": [{"tool_calls": [call]}], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv)
        pane.send("finish the plan")
        pane.wait("echo: finish the plan")
        pane.wait_prompt()
        pane.send("/diff")
        screen = pane.wait("+final")
        assert "-draft" in screen and "+++ b/plan.txt" in screen
        pane.wait_prompt()
        pane.send("/undo")
        pane.wait("restored plan.txt")
        assert target.read_text() == "draft\n"
        pane.wait_prompt()
        pane.send("what now")
        # The note and the message merge into one user turn, which the stub echoes.
        pane.wait("echo: [nex] The user undid the file changes")
        assert srv.rejections == []
        sent = " ".join(text for _, text in _messages(srv.requests[-1]))
        assert "undid the file changes" in sent and "plan.txt" in sent


def test_model_name_switches_the_model_and_keeps_the_conversation(repl) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("first question")
        pane.wait("echo: first question")
        pane.wait_prompt()
        pane.send("/model local:other-model")
        pane.wait("model=local:other-model (from -m)")
        pane.wait_prompt()
        pane.send("second question")
        pane.wait("echo: second question")
        assert srv.rejections == []
        assert srv.requests[0]["model"] == "stub-model"
        assert srv.requests[-1]["model"] == "other-model"  # same server, same history
        assert _messages(srv.requests[-1])[0] == ("user", "first question")


def test_bang_runs_locally_and_at_path_includes_a_file(repl, nex_env: NexEnv) -> None:
    (nex_env.work / "todo.txt").write_text("buy milk\n")
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("!echo from-the-shell-$((6*7))")
        pane.wait("from-the-shell-42")
        pane.wait("not sent to the model")
        assert srv.requests == []  # the shell command never reached the model
        pane.wait_prompt()
        pane.type("summarise @to")
        pane.keys("Tab")  # completes the path from the work dir
        pane.wait("› summarise @todo.txt", "the completed path")
        pane.type(" and @gone.txt")
        pane.keys("Enter")
        pane.wait("@gone.txt: no such file in the work dir; not included")
        pane.wait("echo: summarise @todo.txt and @gone.txt")
        (body,) = srv.requests
        assert "[file todo.txt]\n```\nbuy milk\n```" in _messages(body)[-1][1]


def test_bang_bang_sends_the_output_with_the_next_message(repl, nex_env: NexEnv) -> None:
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        pane = repl(srv)
        pane.send("!!echo shared-$((6*7))")
        pane.wait("goes to the model with your next message")
        pane.wait("1 !! output(s) go with your next message", "the note in the status line")
        assert srv.requests == []  # nothing is sent until the person writes
        pane.send("what did it print?")
        # The echo has markdown (a code span, a fence): the raw stream is re-rendered once it is
        # complete, so the screen shows either form depending on when it is read.
        pane.wait(
            lambda s: (
                re.search(r"echo: \[I ran `?echo shared-\$\(\(6\*7\)\)`? \(exit 0\)", s) is not None
            ),
            "the echo of the !! output, raw or rendered",
        )
        (body,) = srv.requests
        assert _messages(body)[-1][1] == (
            "[I ran `echo shared-$((6*7))` (exit 0); its output:]\n```\nshared-42\n```\n\n"
            "what did it print?"
        )
        pane.wait_prompt()
        pane.send("and now?")
        pane.wait("echo: and now?")
        assert _messages(srv.requests[-1])[-1] == ("user", "and now?")  # sent once only


# -- approvals: the choices, remembered answers, modes ------------------------------------------
def _bash(command: str) -> dict:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def _tool_results(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def test_always_for_a_tool_is_remembered_for_the_session(repl, nex_env: NexEnv) -> None:
    edit = {"name": "write_file", "arguments": {"path": "a.txt", "content": "A\n"}}
    again = {"name": "write_file", "arguments": {"path": "b.txt", "content": "B\n"}}
    script = {
        "replies": [{"tool_calls": [edit]}, {"tool_calls": [again]}, {"content": "both written"}],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.send("write two files")
        pane.wait("run write_file: a.txt? [y/N/a]")
        pane.send("a")
        pane.wait("both written")
        screen = pane.wait_prompt()
        assert "run write_file: b.txt?" not in screen  # the second call was not asked
        assert (nex_env.work / "a.txt").read_text() == "A\n"
        assert (nex_env.work / "b.txt").read_text() == "B\n"
        assert srv.rejections == []


def test_always_for_a_command_prefix_covers_that_prefix_only(repl, nex_env: NexEnv) -> None:
    script = {
        "replies": [
            _bash("touch one.txt"),
            _bash("touch two.txt"),
            _bash("rm one.txt"),
            {"content": "done touching"},
        ],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.send("make files")
        screen = pane.wait("run bash: touch one.txt? [y/N/a/p]")
        assert "p always `touch …` commands in this session" in screen
        pane.send("p")
        pane.wait("run bash: rm one.txt? [y/N/a/p]")  # another program: asked again
        assert (nex_env.work / "two.txt").exists()  # `touch two.txt` ran without asking
        assert "run bash: touch two.txt?" not in pane.screen()
        pane.send("n")
        pane.wait("done touching")
        assert (nex_env.work / "one.txt").exists()  # the rm was declined
        assert srv.rejections == []


def test_no_with_a_reason_reaches_the_model_as_the_tool_result(repl, nex_env: NexEnv) -> None:
    script = {"replies": [_bash("rm -rf build")], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.send("clean up")
        pane.wait("run bash: rm -rf build? [y/N/a/p]")
        pane.send("maybe")  # not an answer: asked again
        pane.wait("answer y, N, a, p (or n REASON)")
        pane.send("n keep the build, run make clean instead")
        pane.wait("echo: clean up")
        assert srv.rejections == []
        assert _tool_results(srv.requests[1]) == [
            "error: the user declined this tool call and said: keep the build, run make clean "
            "instead"
        ]


def test_the_approval_mode_is_in_the_status_line_and_auto_edit_asks_only_for_bash(
    repl, nex_env: NexEnv
) -> None:
    nex_env.write_config('approval = "auto-edit"', local=True)
    write = {"name": "write_file", "arguments": {"path": "auto.txt", "content": "auto\n"}}
    script = {
        "replies": [{"tool_calls": [write]}, _bash("touch asked.txt"), {"content": "finished"}],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        pane = repl(srv, ask=True)
        pane.wait("│ approval auto-edit │", "the mode in the status line")
        pane.send("edit then run")
        pane.wait("run bash: touch asked.txt? [y/N/a/p]")
        assert (nex_env.work / "auto.txt").read_text() == "auto\n"  # written without asking
        assert "run write_file" not in pane.screen()
        pane.send("y")
        pane.wait("finished")
        assert (nex_env.work / "asked.txt").exists()
    with stub_server({"default": {"echo": True}}) as srv:
        # --yes is yolo, over the config. Waited for: a warning printed above the prompt as it
        # starts hides the status line for a moment.
        repl(srv).wait("│ approval yolo │", "yolo in the status line")


def test_the_status_line_says_the_prompt_is_processed_then_the_answers_rate(repl) -> None:
    # A server that takes 3 s before the first token (a long prefill), then streams slowly.
    slow = {"content": " ".join(["word"] * 40), "delay": 3, "chunk_delay": 0.1}
    with stub_server({"replies": [slow]}, strict=True) as srv:
        pane = repl(srv)
        pane.send("go")
        pane.wait("processing prompt…", "the prefill status while the server is silent")
        pane.wait(lambda s: re.search(r"answering · \d+ tok/s", s), "the answer's rate")
        pane.wait_prompt()
