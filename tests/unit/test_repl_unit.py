"""The REPL's pure parts: what a line means, markdown detection, row counting, the screen."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from nexpy.errors import UsageError
from nexpy.repl import (
    Command,
    SessionInput,
    Terminal,
    TerminalSink,
    copy_session,
    has_markdown,
    parse_input,
    read_waiting_keys,
    rows_above_cursor,
    wrap_cells,
)
from nexpy.session import Session


# -- parse_input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("", None),
        ("   \n  ", None),
        ("/help", Command("help", "")),
        ("/save  my-notes  ", Command("save", "my-notes")),
        ("  /tokens", Command("tokens", "")),
        ("/load a b", Command("load", "a b")),
        ("/", Command("", "")),
        ("/frobnicate", Command("frobnicate", "")),
        ("//etc/hosts is odd", "/etc/hosts is odd"),
        ("// spaced", "/ spaced"),
        ("hello", "hello"),
        ("\n\n    indented code\n  more\n\n", "    indented code\n  more"),
        ("a / b", "a / b"),
    ],
)
def test_parse_input_tells_commands_from_messages(typed: str, meant: object) -> None:
    assert parse_input(typed) == meant


def test_a_line_starting_with_slash_is_never_a_message() -> None:
    for typed in ("/x", "/path/to/file broke", " /", "/HELP"):
        assert isinstance(parse_input(typed), Command)


# -- has_markdown -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "# Title",
        "intro\n## Section",
        "- one\n- two",
        "1. first\n2. second",
        "use `ls -la` here",
        "this is **important**",
        "```python\nprint(1)\n```",
        "> quoted",
        "see [the docs](https://example.com)",
        "| a | b |\n|---|---|",
    ],
)
def test_has_markdown_finds_syntax_worth_rendering(text: str) -> None:
    assert has_markdown(text)


@pytest.mark.parametrize(
    "text",
    [
        "echo: hello",
        "2*3*4 = 24",
        "call my_snake_case_name now",
        "a - b = c",
        "#hashtag",
        "plain sentence.\nanother one.",
    ],
)
def test_has_markdown_leaves_plain_text_alone(text: str) -> None:
    assert not has_markdown(text)


# -- rows_above_cursor ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "width", "rows"),
    [
        ("", 80, 0),
        ("abc", 80, 0),
        ("abc\n", 80, 1),
        ("a\nb\nc", 80, 2),
        ("a" * 10, 10, 0),  # exactly full: the cursor waits on the same row (pending wrap)
        ("a" * 11, 10, 1),
        ("a" * 10 + "\n", 10, 1),
        ("a" * 25 + "\nb", 10, 3),
        ("x\n\n\ny", 10, 3),
        ("漢" * 6, 10, 1),  # double-width characters take two cells each
        ("\tx", 8, 1),  # a tab advances to column 8
    ],
)
def test_rows_above_cursor_counts_wrapped_rows(text: str, width: int, rows: int) -> None:
    assert rows_above_cursor(text, width) == rows


# -- Terminal ---------------------------------------------------------------------------------
class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(
    monkeypatch: pytest.MonkeyPatch, *, tty: bool, lines: int = 40
) -> tuple[Terminal, io.StringIO, io.StringIO]:
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a, **k: os.terminal_size((80, lines)))
    out, err = (FakeTty() if tty else io.StringIO()), io.StringIO()
    return Terminal(out, err), out, err


def _stream(term: Terminal, text: str) -> None:
    for i in range(0, len(text), 3):
        term.text(text[i : i + 3])


def test_markdown_answer_is_erased_and_rendered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    term, out, _err = _terminal(monkeypatch, tty=True)
    answer = "some **bold** words\n- item"
    _stream(term, answer)
    term.finish_answer(answer)
    shown = out.getvalue()
    raw, rendered = shown.split("\r\x1b[1A\x1b[J")
    assert raw == answer
    assert "bold" in rendered and "**" not in rendered and "•" in rendered
    assert term.at_line_start


def test_plain_answer_stays_as_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    term, out, _err = _terminal(monkeypatch, tty=True)
    _stream(term, "echo: hello")
    term.finish_answer("echo: hello")
    assert out.getvalue() == "echo: hello\n"


def test_no_rerender_when_stdout_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term, out, _err = _terminal(monkeypatch, tty=False)
    _stream(term, "**bold**")
    term.finish_answer("**bold**")
    assert out.getvalue() == "**bold**\n"


def test_an_answer_taller_than_the_screen_is_not_erased(monkeypatch: pytest.MonkeyPatch) -> None:
    term, out, _err = _terminal(monkeypatch, tty=True, lines=10)
    answer = "# Title\n" + "\n".join(f"line {i}" for i in range(20))
    _stream(term, answer)
    term.finish_answer(answer)
    assert out.getvalue() == answer + "\n"


def test_an_answer_that_was_not_streamed_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    term, out, _err = _terminal(monkeypatch, tty=False)
    term.finish_answer("all at once")
    assert out.getvalue() == "all at once\n"


def test_only_text_after_the_last_progress_line_is_rerendered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    term, out, err = _terminal(monkeypatch, tty=True)
    term.text("Let me look.")
    term.note("→ read_file: a.py")
    _stream(term, "It is `fine`.")
    term.finish_answer("It is `fine`.")
    shown = out.getvalue()
    assert shown.startswith("Let me look.\nIt is `fine`.\r\x1b[J")
    assert err.getvalue() == "→ read_file: a.py\n"


class FakeRenderer:
    def __init__(self, out: io.StringIO) -> None:
        self.out = out
        self._bracketed_paste_enabled = True
        self._min_available_height = 30  # rows from the prompt to the bottom of the screen
        self.paste_seen_by_erase: list[bool] = []

    def erase(self) -> None:
        self.paste_seen_by_erase.append(self._bracketed_paste_enabled)
        self._min_available_height = 0  # what a real erase (a renderer reset) forgets
        self.out.write("<erase>")


class FakePrompt:
    """A prompt that is reading: what `Terminal` needs of prompt-toolkit's Application."""

    def __init__(self, out: io.StringIO) -> None:
        self.is_running, self.is_done = True, False
        self.renderer = FakeRenderer(out)
        self.redraws = 0

    def _request_absolute_cursor_position(self) -> None:
        pass

    def invalidate(self) -> None:
        self.redraws += 1


def test_with_a_prompt_reading_whole_lines_go_above_it_and_the_rest_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    term, out, err = _terminal(monkeypatch, tty=True)
    prompt = FakePrompt(out)
    term.live = lambda: prompt  # type: ignore[assignment,return-value]
    for piece in ("Hel", "lo\nwor", "ld"):
        term.text(piece)
    assert out.getvalue() == "<erase>Hello\n"
    assert term.pending == "world"  # shown inside the prompt, which starts at a line start
    # The prompt starts a row lower, and still knows it: its status line never blinks out.
    assert prompt.renderer._min_available_height == 29
    term.note("→ bash: ls")
    assert out.getvalue() == "<erase>Hello\n<erase>world\n<erase>"
    assert err.getvalue() == "→ bash: ls\n"
    assert term.pending == "" and prompt.redraws >= 3
    # Erasing must not switch bracketed paste off: a paste would then submit at a newline.
    assert prompt.renderer.paste_seen_by_erase == [False, False, False]
    assert prompt.renderer._bracketed_paste_enabled


def test_with_a_prompt_reading_markdown_erases_only_the_lines_above_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    term, out, _err = _terminal(monkeypatch, tty=True)
    prompt = FakePrompt(out)
    term.live = lambda: prompt  # type: ignore[assignment,return-value]
    answer = "some **bold** words\n- item"
    _stream(term, answer)
    assert term.pending == "- item"
    term.finish_answer(answer)
    raw, rendered = out.getvalue().split("<erase>\r\x1b[1A\x1b[J")
    assert raw == "<erase>some **bold** words\n"
    assert "•" in rendered and "**" not in rendered
    assert term.pending == "" and term.at_line_start


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [("abcdef", 3, "abc\ndef"), ("ab\ncd", 10, "ab\ncd"), ("日本語", 4, "日本\n語"), ("", 5, "")],
)
def test_wrap_cells_breaks_where_the_terminal_would(text: str, width: int, shown: str) -> None:
    assert wrap_cells(text, width) == shown


def test_read_waiting_keys_takes_what_was_typed_without_waiting() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as tty:
        stdin = SessionInput(tty)
        with stdin.raw_mode():  # as for the whole REPL session; cooked, Enter would be "\n"
            os.write(master, b"y\r\x1b[A")
            keys = read_waiting_keys(stdin)
            assert [k.data for k in keys] == ["y", "\r", "\x1b[A"]
            assert read_waiting_keys(stdin) == []  # and returns at once when nothing waits
    os.close(master)


def test_sink_shows_tools_and_errors_but_not_answer_text() -> None:
    out, err = io.StringIO(), io.StringIO()
    term = Terminal(out, err)
    sink = TerminalSink(term)
    term.text("thinking")
    base = {"session": "s", "ts": "t"}
    sink({"type": "message", "role": "assistant", "content": "thinking", "final": False, **base})
    sink({"type": "tool.call", "id": "1", "name": "bash", "arguments": {"command": "ls"}, **base})
    sink({"type": "tool.result", "id": "1", "name": "bash", "ok": True, "output": "a.py", **base})
    sink({"type": "usage", "prompt_tokens": 1, "completion_tokens": 1, **base})
    sink({"type": "error", "kind": "transient", "message": "HTTP 503", "retryable": True, **base})
    assert out.getvalue() == "thinking\n"
    assert err.getvalue() == "→ bash: ls\n  ✓ a.py\nerror: HTTP 503\n"


# -- /save ------------------------------------------------------------------------------------
def test_copy_session_copies_the_journal_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = Session.create(tmp_path, "orig")
    source.lock()
    source.append("message", message={"role": "user", "content": "hi"})
    (source.outputs_dir / "out.txt").write_text("full output")
    copy = copy_session(source, tmp_path, "kept")
    assert copy.messages() == [{"role": "user", "content": "hi"}]
    assert (copy.outputs_dir / "out.txt").read_text() == "full output"
    assert copy.entries()[-1]["kind"] == "end" and copy.entries()[-1]["saved_from"] == "orig"
    assert not copy.locked
    with pytest.raises(UsageError, match="already exists"):
        copy_session(source, tmp_path, "kept")
    with pytest.raises(UsageError, match="already exists"):
        copy_session(source, tmp_path, "orig")
    source.close()


def test_bang_is_a_local_shell_command_never_a_message() -> None:
    from nexpy.repl import Command, parse_input

    assert parse_input("!ls -la") == Command("!", "ls -la")
    assert parse_input("  ! git status ") == Command("!", "git status")
    assert parse_input("!") == "!"  # nothing to run: an ordinary message
    assert parse_input("!!git diff") == Command("!!", "git diff")  # run, then share the output
    assert parse_input("!!") == "!!"


def test_a_shared_shell_output_is_capped_for_the_model() -> None:
    from nexpy.repl import SHELL_SHARED_CHARS, shared_output

    text = shared_output("cat big", 0, ["y" * (SHELL_SHARED_CHARS + 50)])
    assert text.startswith("[I ran `cat big` (exit 0); its output:]\n```\n")
    assert text.count("y") == SHELL_SHARED_CHARS
    assert f"[... cut at {SHELL_SHARED_CHARS:,} characters]" in text
