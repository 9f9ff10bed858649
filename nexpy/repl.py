"""The REPL: a person talks to the agent in a terminal.

One asyncio loop runs everything: prompt-toolkit reads a message (`prompt_async`), the agent
answers in a task the person can cancel with Esc or Ctrl-C, and the answer streams to stdout as
it arrives. When it is complete and has markdown in it, the raw lines are erased and rich renders
it once. Tool activity, warnings and errors go to stderr through the event stream, so stdout
carries only answers and the REPL's own UI.

Typeahead is never lost: the terminal stays in raw mode for the whole session (a key typed
between two prompts waits in the kernel untranslated, an Enter stays an Enter), and the prompt
keeps reading while an answer streams, printed above it. A message submitted then is queued,
shown in the status line, and sent when the turn ends.

Lines starting with `/` are commands and never reach the model; `//text` sends `/text`.
`!cmd` runs a shell command here and shows its output; `!!cmd` also hands the output to the
model with the next message. `@path` includes a work-dir file in a message (nexpy.mentions).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import select
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, get_app_or_none, in_terminal
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
from prompt_toolkit.input.vt100 import Vt100Input
from prompt_toolkit.input.vt100_parser import Vt100Parser
from prompt_toolkit.key_binding import KeyBindings, KeyPress, KeyPressEvent
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from nexpy import __version__
from nexpy.approval import Approvals, parse_answer
from nexpy.errors import LimitReached, NexError, UsageError
from nexpy.events import Event, ProgressSink, describe_call
from nexpy.handler import ContextControl
from nexpy.mentions import PathCompleter, include_files
from nexpy.notify import answer_ready
from nexpy.outcome import outcome_of
from nexpy.plan import SpawnPlan
from nexpy.progress import Progress
from nexpy.reasoning import Thought, tokens
from nexpy.runtime import Run, RunOptions, cancel_on, print_traceback
from nexpy.session import copy_session, list_sessions, private_dir, state_home, validate_name
from nexpy.tools.diffs import colored

PROMPT = "› "
HISTORY_FILE = "repl_history"

KEYS_HELP = (
    "Enter sends · Alt-Enter or Esc Enter adds a line · Enter while an answer comes queues the "
    "message · Esc or Ctrl-C cancels an answer (queued text comes back) or clears the line · "
    "Ctrl-D quits · //text sends /text"
)
EXTRAS_HELP = (
    "!cmd runs cmd here (not sent) · !!cmd runs it and sends its output with your next message "
    "· @path includes a work-dir file (Tab completes)"
)
ESCAPE_WAIT = 0.3  # seconds a lone Esc waits to see whether Enter follows (Esc Enter adds a line)

# Markdown worth a re-render: block syntax at a line start, or unambiguous inline markup.
# Single `*` or `_` emphasis is left out: "2*3*4" and snake_case names are not markdown.
_MARKDOWN = re.compile(
    r"^ {0,3}(?:#{1,6}\s|[-*+]\s+\S|\d{1,3}[.)]\s+\S|>\s|```|~~~|\|.*\|\s*$)"
    r"|\*\*[^*\n]+\*\*|__[^_\n]+__|`[^`\n]+`|\[[^\]\n]+\]\([^)\s]+\)",
    re.MULTILINE,
)


# -- pure helpers (unit-tested) ---------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """A slash command as typed: `/save notes` is Command("save", "notes")."""

    name: str
    arg: str


def parse_input(text: str) -> Command | str | None:
    """What a submitted line means: a command, a message to send, or nothing (blank).

    A line whose first non-blank character is `/` is a command, so a mistyped command can never
    reach the model; `//` escapes that and sends the text with one leading slash removed.
    """
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.startswith("//"):
        return stripped[1:]
    if stripped.startswith("!") and stripped.lstrip("!").strip():
        # A shell command run here: `!cmd` never sent, `!!cmd` its output with the next message.
        bang = "!!" if stripped.startswith("!!") else "!"
        return Command(bang, stripped[len(bang) :].strip())
    if stripped.startswith("/"):
        parts = stripped[1:].split(maxsplit=1)
        if not parts:
            return Command("", "")
        return Command(parts[0], parts[1].strip() if len(parts) > 1 else "")
    # Keep the indentation of a pasted first line; only blank edges go.
    return text.strip("\n").rstrip()


def has_markdown(text: str) -> bool:
    """Whether rendering `text` as markdown would change how it looks."""
    return _MARKDOWN.search(text) is not None


def _line_width(line: str) -> int:
    return get_cwidth(line.expandtabs(8))


def rows_above_cursor(text: str, width: int) -> int:
    """How many terminal rows above the cursor the first row of `text` is.

    `text` was written starting at column 0 of a terminal `width` columns wide. Each line takes
    ceil(cells / width) rows (at least one); the cursor sits on the last line, and a line that
    exactly fills the width leaves the cursor on that row (the terminal's pending wrap), so
    moving up this many rows and clearing to the end of the screen erases exactly `text`.
    """
    width = max(1, width)
    lines = text.split("\n")
    rows = sum(max(1, -(-_line_width(line) // width)) for line in lines[:-1])
    last = _line_width(lines[-1])
    return rows + ((last - 1) // width if last else 0)


# -- the terminal --------------------------------------------------------------------------------
def wrap_cells(text: str, width: int) -> str:
    """`text` with a newline wherever the terminal would wrap it at `width` columns."""
    rows: list[str] = []
    for line in text.expandtabs(8).split("\n"):
        row, used = "", 0
        for char in line:
            cells = get_cwidth(char)
            if used + cells > width and row:
                rows.append(row)
                row, used = "", 0
            row += char
            used += cells
        rows.append(row)
    return "\n".join(rows)


class Terminal:
    """Writes the answer stream and the progress lines, keeping track of where the cursor is.

    Streamed text and progress lines share one screen: a progress line must start on a fresh
    line, and only the text streamed since the last progress line can be erased and re-rendered.

    While the prompt reads (`live` returns its running application), everything is printed above
    it: the prompt is erased, whole lines are written, and it is drawn again below them. The
    unfinished last line of a streaming answer (`pending`) is shown inside the prompt instead, so
    the prompt always starts at a line start.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        live: Callable[[], Application[Any] | None] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live = live
        self.at_line_start = True
        self.pending = ""  # streamed text of the current line not yet written above the prompt
        self._streamed: list[str] = []  # answer pieces written since the last progress line
        self.thought = 0  # characters of thinking so far: a live line, then a summary

    def _app(self) -> Application[Any] | None:
        app = self.live() if self.live is not None else None
        return app if app is not None and app.is_running and not app.is_done else None

    def _above(self, write: Callable[[], None], rows: int | None = None) -> None:
        """Run `write` (whole lines, `rows` rows if known) above the prompt if one is reading."""
        app = self._app()
        available = 0
        if app is not None:
            available = app.renderer._min_available_height
            # Erasing resets the renderer, which switches bracketed paste off until the next
            # draw: a paste arriving meanwhile would submit at its first newline. Keep it on.
            renderer = app.renderer
            paste_on = renderer._bracketed_paste_enabled
            renderer._bracketed_paste_enabled = False
            renderer.erase()  # the cursor is now where the prompt started: a line start
            renderer._bracketed_paste_enabled = paste_on
        write()
        if app is not None:
            # The status line is drawn only while the rows below the prompt are known; the
            # prompt now starts `rows` lower, so say so rather than hide the status line until
            # the terminal answers where the cursor is (asked for as `in_terminal` does).
            if rows is not None and available:
                app.renderer._min_available_height = max(1, available - rows)
            app._request_absolute_cursor_position()
            app.invalidate()

    def _write(self, stream: TextIO, text: str) -> None:
        def write() -> None:
            stream.write(text)
            stream.flush()

        # `text` ends with a newline: the rows above the cursor after it are the rows it took.
        self._above(write, rows_above_cursor(text, shutil.get_terminal_size().columns))

    def text(self, piece: str) -> None:
        """One streamed piece of the answer, shown at once (thinking: counted on a live line)."""
        if not piece:
            return
        if isinstance(piece, Thought):
            self.thought += len(piece)
            app = self._app()
            if app is not None:
                app.invalidate()  # the prompt redraws the "thinking…" line
            return
        self.end_thinking()
        self._streamed.append(piece)
        self.at_line_start = piece.endswith("\n")
        self.pending += piece
        app = self._app()
        if app is None:
            shown, self.pending = self.pending, ""
        else:
            head, newline, self.pending = self.pending.rpartition("\n")
            shown = head + newline
            app.invalidate()  # the prompt shows the new `pending`
        if shown:
            self._write(self.out, shown)

    def break_line(self) -> None:
        """Move to the start of a fresh line if the cursor is not at one."""
        if not self.at_line_start:
            shown, self.pending = self.pending + "\n", ""
            self._write(self.out, shown)
            self.at_line_start = True

    def say(self, text: str) -> None:
        """A line of the REPL's own UI, on stdout."""
        self.break_line()
        self._write(self.out, text.rstrip("\n") + "\n")
        self._streamed.clear()

    def thinking(self) -> str:
        """The live line while the model thinks ("" when it is not thinking)."""
        return f"thinking… ≈{tokens(self.thought):,} tokens" if self.thought else ""

    def end_thinking(self) -> None:
        """The thinking is over: its live line collapses into one dim summary line."""
        if self.thought:
            summary = f"(thought for ≈{tokens(self.thought):,} tokens)"
            self.thought = 0
            self.note(f"\x1b[2m{summary}\x1b[0m" if self.err.isatty() else summary)

    def note(self, text: str) -> None:
        """Progress, warnings and errors, on stderr, each on a line of its own."""
        self.end_thinking()
        self.break_line()
        self._write(self.err, text if text.endswith("\n") else text + "\n")
        self._streamed.clear()

    def begin_answer(self) -> None:
        """A message was sent: its answer starts on a fresh line."""
        self.thought = 0
        self.break_line()
        self._streamed.clear()

    def finish_answer(self, answer: str) -> None:
        """Show the complete answer: re-render its markdown once, or leave the raw stream."""
        self.end_thinking()
        streamed = "".join(self._streamed)
        self._streamed.clear()
        if not answer.strip():
            self.break_line()
            return
        # Only re-render what the stream showed; anything else (e.g. a provider that did not
        # stream) is printed whole.
        matches = streamed.strip() == answer.strip()
        if self.out.isatty() and has_markdown(answer) and (matches or not streamed):
            # What is on the screen: the stream less the line still pending in the prompt.
            shown = streamed[: len(streamed) - len(self.pending)]
            rendered = False

            def rerender() -> None:
                nonlocal rendered
                if streamed and not self._erase(shown):
                    return
                self._render_markdown(answer)
                rendered = True

            self._above(rerender)
            if rendered:
                self.pending = ""
                self.at_line_start = True
            else:
                self.break_line()
            return
        if not streamed:
            self._write(self.out, answer if answer.endswith("\n") else answer + "\n")
            self.at_line_start = True
            return
        self.break_line()

    def _erase(self, streamed: str) -> bool:
        """Erase the streamed lines; False if some already scrolled off and cannot be reached."""
        size = shutil.get_terminal_size()
        up = rows_above_cursor(streamed, size.columns)
        if up >= size.lines - 1:
            return False
        self.out.write("\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J")
        self.out.flush()
        return True

    def _render_markdown(self, text: str) -> None:
        # rich costs tens of milliseconds to import: only pay for it when there is markdown.
        from rich.console import Console
        from rich.markdown import Markdown

        Console(file=self.out).print(Markdown(text))
        self.out.flush()


class TerminalSink:
    """The REPL's event sink: tool calls and results, warnings and errors, as lines for a person.

    Assistant text is not shown here; the REPL streams it itself. The lines are the ones
    `ProgressSink` writes for autonomous runs, so both modes read the same.
    """

    SHOWN = frozenset({"tool.call", "tool.result", "warning"})

    def __init__(self, terminal: Terminal, *, verbose: bool = False) -> None:
        self.terminal = terminal
        self._buffer = io.StringIO()
        self._progress = ProgressSink(self._buffer, verbose=verbose)
        self.live = Progress()  # the request in flight, for the status line

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "context":  # a request is about to go out
            self.live.start()
        elif kind in ("usage", "message", "tool.call", "error"):
            self.live.stop()
        if kind == "error":
            self.terminal.note(f"error: {event['message']}")
        elif kind in self.SHOWN:
            self._progress(event)
            text = self._buffer.getvalue()
            self._buffer.seek(0)
            self._buffer.truncate()
            if text:
                self.terminal.note(text)


class SessionInput(Vt100Input):
    """stdin for the whole REPL session: raw from the first prompt to the end.

    prompt-toolkit puts the terminal back into cooked mode between prompts and while it prints
    above one; a key typed then is translated by the kernel (Enter arrives as Ctrl-J, a newline)
    or echoed. Kept raw, every key waits untranslated until a prompt reads it.
    """

    def cooked_mode(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def read_waiting_keys(stdin: SessionInput) -> list[KeyPress]:
    """Take every key typed so far and not yet read by a prompt, without waiting for more."""
    keys = get_typeahead(stdin)  # read by a prompt that ended before using them
    fd = stdin.fileno()
    data = b""
    with contextlib.suppress(OSError):
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    parser = Vt100Parser(keys.append)
    parser.feed(data.decode("utf-8", "replace"))
    parser.flush()
    return keys


# -- the REPL ----------------------------------------------------------------------------------
CommandHandler = Callable[["Repl", str], Awaitable[bool]]


class Repl:
    """One interactive session: the prompt, the commands, and the message in flight."""

    def __init__(self, plan: SpawnPlan, opts: RunOptions) -> None:
        self.plan = plan
        self.opts = opts
        self.home = opts.home or state_home()
        self.stdin = SessionInput(sys.stdin)
        self.terminal = Terminal()
        self.sink = TerminalSink(self.terminal, verbose=opts.verbose)
        self._generating: asyncio.Task[str] | None = None
        self._cancelled_by = "^C"  # the key that cancelled the answer, for the note
        self._window_probe: asyncio.Task[None] | None = None
        self._confirm_prompt: PromptSession[str] | None = None
        # The message (or command) being handled while the prompt reads on, and what was
        # submitted meanwhile, to be handled in order when it is done.
        self._work: asyncio.Task[None] | None = None
        self._queue: list[str] = []
        self._leaving = False
        # The approval mode and the "always" answers, kept until the REPL ends.
        self.approvals = Approvals(opts.approval)
        self._shared: list[str] = []  # `!!cmd` outputs waiting for the next message
        busy = Condition(lambda: self._work is not None)
        self.prompt = PromptSession[str](
            history=self._history(),
            multiline=True,
            key_bindings=_key_bindings(busy, self.enqueue, self.cancel),
            prompt_continuation=lambda width, line, wrap: " " * width,
            bottom_toolbar=self.toolbar,
            completer=PathCompleter(opts.handler.workdir),
            # On Tab only: a Tab pressed while a completion-as-you-type is still being computed
            # is dropped by prompt-toolkit (one completion at a time).
            complete_while_typing=False,
            style=Style.from_dict(
                {
                    "prompt": "bold",
                    "bottom-toolbar.queued": "noreverse dim italic",
                    "thinking": "dim italic",
                }
            ),
            input=self.stdin,
        )
        self.prompt.app.timeoutlen = ESCAPE_WAIT
        # Whichever prompt reads (this one, or the approval question), output goes above it.
        self.terminal.live = get_app_or_none
        # Last: from here on the session is locked and `main` must end the run.
        self.run = Run(plan, opts, sinks=[self.sink], confirm=self.confirm)

    def _history(self) -> FileHistory | None:
        try:
            private_dir(self.home)
        except NexError as e:
            self.terminal.note(f"warning: no input history: {e.message}")
            return None
        return FileHistory(str(self.home / HISTORY_FILE))

    # -- the loop ---------------------------------------------------------------------------
    async def main(self, first_message: str | None) -> int:
        """Read and answer messages until /quit, Ctrl-D, SIGTERM or SIGHUP; end the run."""
        loop = asyncio.get_running_loop()
        saved_sigint = signal.getsignal(signal.SIGINT)
        with cancel_on(signal.SIGTERM, signal.SIGHUP):
            return await self._main(loop, saved_sigint, first_message)

    async def _main(
        self, loop: asyncio.AbstractEventLoop, saved_sigint: Any, first_message: str | None
    ) -> int:
        outcome = outcome_of(None, finished="user_exit")
        try:
            self._install_sigint()
            self.banner()
            # Learn the real window in the background so the status bar shows it; the prompt
            # never waits on a server probe.
            if isinstance(self.run.agent, ContextControl):
                self._window_probe = asyncio.create_task(self.run.agent.ensure_window())
            if first_message and first_message.strip():
                self.terminal.say(PROMPT + first_message)
                self._start(first_message)
            with self.stdin.raw_mode():
                await self._read_loop()
        except BaseException as e:  # Ctrl-C, SIGTERM/SIGHUP, or a bug: never a completion
            outcome = outcome_of(e)
            if not isinstance(e, asyncio.CancelledError):
                raise
        finally:
            await self._stop_work()
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
            # remove_signal_handler resets SIGINT to Python's default; put back what asyncio.run
            # had installed, as prompt-toolkit does after each prompt.
            signal.signal(signal.SIGINT, saved_sigint)
            await self.run.end(outcome)
        return outcome.code

    async def _read_loop(self) -> None:
        """Read lines until Ctrl-D or /quit; the prompt reads on while a line is handled."""
        while not self._leaving:
            try:
                text = await self.prompt.prompt_async(self._prompt_message)
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                return  # Ctrl-D at an empty prompt, or /quit
            finally:
                # prompt-toolkit takes SIGINT over while it reads and drops it afterwards.
                self._install_sigint()
            self._start(text)

    def _start(self, text: str) -> None:
        """Handle a submitted line, and then the lines queued meanwhile, in a task of its own."""
        self._work = asyncio.create_task(self._handle(text))

    async def _handle(self, text: str) -> None:
        try:
            while True:
                action = parse_input(text)
                if isinstance(action, Command):
                    if await self.command(action):
                        self._leave()
                        return
                elif action is not None:
                    await self.send(action)
                if not self._queue:
                    return
                text = self._queue.pop(0)
                self.terminal.say(PROMPT + text)  # where it would have been echoed
        finally:
            self._work = None
            self.prompt.app.invalidate()  # the status line no longer says "answering"

    def _leave(self) -> None:
        """End the prompt as Ctrl-D does (for /quit, which runs while the prompt reads)."""
        self._leaving = True
        self._queue.clear()
        app = self.prompt.app
        if app.is_running and not app.is_done:
            app.exit(exception=EOFError())

    async def _stop_work(self) -> None:
        work = self._work
        if work is not None and not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    def enqueue(self, buffer: Buffer) -> None:
        """Enter while a line is handled: queue the text, to be sent when the turn ends."""
        if buffer.text.strip():
            self._queue.append(buffer.text)
            buffer.append_to_history()
            buffer.reset()

    def cancel(self, buffer: Buffer, key: str) -> None:
        """Esc or Ctrl-C while a line is handled: stop the answer; queued text comes back."""
        if self._queue:
            typed = buffer.text
            buffer.text = "\n".join(self._queue) + ("\n" + typed if typed else "")
            buffer.cursor_position = len(buffer.text)
            self._queue.clear()
        self._cancelled_by = key
        if self._generating is not None:
            self._generating.cancel()

    def _prompt_message(self) -> StyleAndTextTuples:
        """The prompt, below the unfinished line of a streaming answer."""
        pending = self.terminal.pending
        if not pending:
            thinking = self.terminal.thinking()
            if thinking:
                return [("class:thinking", thinking + "\n"), ("class:prompt", PROMPT)]
            return [("class:prompt", PROMPT)]
        width = self.prompt.app.output.get_size().columns
        return [("", wrap_cells(pending, width) + "\n"), ("class:prompt", PROMPT)]

    def _install_sigint(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._on_sigint)

    def _on_sigint(self) -> None:
        """SIGINT while an answer is coming cancels it; at any other moment it does nothing."""
        if self._generating is not None:
            self._cancelled_by = "^C"
            self._generating.cancel()

    async def send(self, text: str) -> None:
        """Send one message and show the answer; every failure ends here, the REPL goes on."""
        text = self.compose(text)
        self.terminal.begin_answer()
        started = time.monotonic()

        def on_text(piece: str) -> None:
            self.sink.live.text(piece)
            self.terminal.text(piece)

        task = asyncio.ensure_future(self.run.agent.send(text, on_text))
        self._generating = task
        ticking = asyncio.ensure_future(self._tick())
        try:
            answer = await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # the REPL itself is being stopped, not just this answer
            self.terminal.note(f"{self._cancelled_by} (cancelled)")
            return
        except LimitReached as e:
            self.run.emitter.emit("warning", message=e.line())
            return
        except NexError as e:
            self.run.emitter.emit("error", kind=e.kind, message=e.line(), retryable=e.retryable)
            return
        except Exception as e:
            # A bug must not cost the person their conversation: it is journaled up to here.
            self.run.emitter.emit(
                "error", kind="internal", message=f"{type(e).__name__}: {e}", retryable=False
            )
            if self.opts.verbose:
                print_traceback(e)
            return
        finally:
            self._generating = None
            self.sink.live.stop()
            ticking.cancel()
        self.terminal.finish_answer(answer)
        answer_ready(sys.stdout, time.monotonic() - started, self.opts.notify_after)

    async def _tick(self) -> None:
        """Redraw the status line once a second while an answer is in the works: its seconds
        and tokens/s move though nothing else happens."""
        while True:
            await asyncio.sleep(1.0)
            self.prompt.app.invalidate()

    async def confirm(self, name: str, args: dict[str, Any], diff: str = "") -> bool | str:
        """Ask before a mutating tool runs, unless the approval mode or an earlier "always"
        answer allows it (nexpy.approval). The diff it would make is shown first (colored on a
        terminal). True runs it; False or the person's reason declines. Ctrl-C cancels the
        answer.

        Keys typed before the question is drawn belong to the next message, never to the
        answer: they are taken before asking and given back to the main prompt afterwards.
        """
        if self.approvals.allows(name, args):
            return True
        prefix = self.approvals.prefix_for(name, args)
        self.terminal.break_line()
        if self._confirm_prompt is None:
            self._confirm_prompt = PromptSession[str](input=self.stdin)
        held: list[KeyPress] = []
        try:
            async with in_terminal():  # hides the main prompt and stops it reading
                held = read_waiting_keys(self.stdin)
                if diff:
                    print(colored(diff) if sys.stdout.isatty() else diff, flush=True)
                print(approval_choices(name, prefix), flush=True)
                keys = "[y/N/a/p]" if prefix else "[y/N/a]"
                question = f"run {describe_call(name, args)}? {keys} "
                while True:
                    reply = await self._confirm_prompt.prompt_async(question)
                    answer = parse_answer(reply, prefix_offered=prefix is not None)
                    if answer is not None:
                        break
                    print(f"answer {keys[1:-1].replace('/', ', ')} (or n REASON)", flush=True)
        except EOFError:
            return False
        except KeyboardInterrupt:
            self._on_sigint()
            raise asyncio.CancelledError from None
        finally:
            self._install_sigint()
            self._give_back(held + get_typeahead(self.stdin))
        if answer.choice == "tool":
            self.approvals.always_tool(name)
        elif answer.choice == "prefix" and prefix is not None:
            self.approvals.always_prefix(prefix)
        elif answer.choice == "no":
            return answer.reason or False
        return True

    def _give_back(self, keys: list[KeyPress]) -> None:
        """Hand keys to the main prompt, as if it had read them itself."""
        if not keys:
            return
        app = self.prompt.app
        if app.is_running and not app.is_done:
            app.key_processor.feed_multiple(keys)
            app.key_processor.process_keys()
        else:
            store_typeahead(self.stdin, keys)

    # -- UI -----------------------------------------------------------------------------------
    def banner(self) -> None:
        session = self.run.session
        count = len(session.messages())
        resumed = f", resumed with {count} messages" if count else ""
        self.terminal.say(f"nex {__version__} · {self.plan.spec} · session {session.id}{resumed}")
        self.terminal.say("/help lists commands · " + KEYS_HELP.split(" · ")[0] + " · Ctrl-D quits")

    def toolbar(self) -> StyleAndTextTuples:
        agent = self.run.agent
        totals = agent.totals
        busy = ""
        if self._work is not None:
            # "processing prompt… 12 s" until the first token, then the answer's rate.
            busy = f" {self.sink.live.line() or 'answering'} · Esc cancels │"
        processed = getattr(agent, "prompt_processed", None)
        # What the server re-processed of the last prompt: with its prompt cache warm, the new part.
        fresh = f" (processed {processed:,})" if processed is not None else ""
        line: StyleAndTextTuples = [
            (
                "",
                f"{busy} {self.plan.spec} │ context "
                f"{_context(agent.context_used, agent.window)}{fresh} "
                f"│ tokens in {totals.input_tokens:,} out {totals.output_tokens:,} │ "
                f"sandbox {self.plan.sandbox.mode} │ approval {self.approvals.mode} │ /help",
            )
        ]
        if self._shared:
            line.append(("", f"\n {len(self._shared)} !! output(s) go with your next message"))
        for text in self._queue:
            first = text.strip().split("\n", 1)[0]
            line.append(("class:bottom-toolbar.queued", f"\n queued › {first}"))
        return line

    async def command(self, cmd: Command) -> bool:
        """Run a slash command; True means quit."""
        if cmd.name in ("!", "!!"):
            await self.shell(cmd.arg, share=cmd.name == "!!")
            return False
        handler = COMMANDS.get(cmd.name.lower())
        if handler is None:
            self.terminal.note(f"unknown command /{cmd.name}; /help lists them")
            return False
        try:
            return await handler[0](self, cmd.arg)
        except NexError as e:
            self.terminal.note(f"error: {e.line()}")
        except OSError as e:
            self.terminal.note(f"error: {e}")
        return False

    async def shell(self, command: str, *, share: bool = False) -> None:
        """`!cmd`: run a shell command in the work dir and show its output; the model never
        sees it (it is the person's own look around). `!!cmd` (`share`) also keeps the output
        to go to the model with the next message, as claude's `!` and aider's /run do."""
        proc = await asyncio.create_subprocess_shell(
            command,
            cwd=self.opts.handler.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), SHELL_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.terminal.note(f"!{command}: stopped")
            return
        lines = out.decode("utf-8", "replace").rstrip("\n").splitlines()
        if len(lines) > SHELL_LINES:
            lines = [*lines[:SHELL_LINES], f"[... {len(lines) - SHELL_LINES} more lines]"]
        if share:
            self._shared.append(shared_output(command, proc.returncode, lines))
            where = "goes to the model with your next message"
        else:
            where = "not sent to the model; !!cmd sends it"
        self.terminal.say("\n".join([*lines, f"[exit {proc.returncode}; {where}]"]))

    def compose(self, text: str) -> str:
        """The message as the model gets it: `!!cmd` outputs first, then the typed text with the
        `@path` files it names (a note for each left out)."""
        included = include_files(text, self.opts.handler.workdir)
        for note in included.notes:
            self.terminal.note(note)
        if included.files:
            self.terminal.note("included " + ", ".join(included.files))
        shared, self._shared = self._shared, []
        return "\n\n".join([*shared, included.text])

    # -- commands -----------------------------------------------------------------------------
    async def cmd_help(self, arg: str) -> bool:
        width = max(len(usage) for _, usage, _ in COMMANDS.values())
        lines = [f"  {usage:<{width}}  {text}" for _, usage, text in COMMANDS.values()]
        self.terminal.say(
            "\n".join(["commands:", *lines, "also: " + EXTRAS_HELP, "keys: " + KEYS_HELP])
        )
        return False

    async def cmd_clear(self, arg: str) -> bool:
        # The handler journals the reset, so a resume of this session starts fresh too.
        await self.run.agent.clear()
        self.terminal.say("started a fresh conversation (the journal keeps the old one)")
        return False

    async def cmd_compact(self, arg: str) -> bool:
        # Only nex's own loop owns its context; the wrapped CLIs manage theirs.
        if not isinstance(self.run.agent, ContextControl):
            self.terminal.say(f"/compact: the {self.plan.handler} CLI manages its own context")
            return False
        self.terminal.say(await self.run.agent.compact())
        return False

    async def cmd_undo(self, arg: str) -> bool:
        from nexpy.undo import revert

        turns = int(arg) if arg.strip().isdigit() and int(arg) > 0 else 1
        workdir = self.run.opts.handler.workdir.resolve()
        report = revert(self.run.session, workdir, turns)
        if not report.calls:
            self.terminal.say("/undo: no file changes left to undo in this session")
            return False
        add_note = getattr(self.run.agent, "add_note", None)
        if add_note is not None:
            add_note(report.note())
        self.terminal.say("\n".join(report.lines()))
        return False

    async def cmd_diff(self, arg: str) -> bool:
        from nexpy.undo import session_diff

        diff = session_diff(self.run.session, self.run.opts.handler.workdir)
        shown = colored(diff) if sys.stdout.isatty() else diff
        self.terminal.say(shown or "/diff: this session changed no files (or undid them)")
        return False

    async def cmd_tokens(self, arg: str) -> bool:
        agent = self.run.agent
        totals = agent.totals
        self.terminal.say(
            f"tokens in context at the last request: {_context(agent.context_used, agent.window)}\n"
            f"this run: {totals.turns} requests, {totals.input_tokens:,} tokens in, "
            f"{totals.output_tokens:,} out"
        )
        return False

    async def cmd_model(self, arg: str) -> bool:
        if not arg.strip():
            self.terminal.say(
                f"model: {self.plan.spec}\n{self.plan.line()}\n"
                "/model NAME [ENDPOINT] switches, keeping this conversation"
            )
            return False
        plan = self._replan(*arg.split(maxsplit=1))
        # The same session, so the history (and the journaled instructions) carry over; its
        # lock is let go first, and taken back with the old plan if the new one cannot start.
        opts = replace(self.opts, chat=self.run.session.id, resume=None)
        await self.run.end(outcome_of(None, finished="switched"))
        try:
            new = Run(plan, opts, sinks=[self.sink], confirm=self.confirm)
        except BaseException:
            self.run = Run(self.plan, opts, sinks=[self.sink], confirm=self.confirm)
            self.opts = opts
            raise
        self.run, self.opts, self.plan = new, opts, plan
        self.terminal.say(plan.line())
        return False

    def _replan(self, name: str, endpoint: str | None = None) -> SpawnPlan:
        """The plan for `/model NAME [ENDPOINT]`: the same rules as `nex -m NAME -e ENDPOINT`;
        without an endpoint, a model on the same route stays on the current server."""
        from nexpy.config import load_config
        from nexpy.plan import SpawnRequest, plan_spawn
        from nexpy.routing import parse_model

        if endpoint is None and parse_model(name).route == self.plan.spec.route:
            endpoint = self.plan.endpoint
        workdir = self.opts.handler.workdir
        plan = plan_spawn(SpawnRequest(name, endpoint), load_config(workdir))
        if plan.handler != self.plan.handler:
            raise UsageError(
                f"/model cannot move this {self.plan.handler} conversation to {plan.handler}",
                hint=f"start a new session: nex -m {name}",
            )
        plan.sandbox = self.plan.sandbox  # the mode this REPL started with
        return plan

    async def cmd_save(self, arg: str) -> bool:
        if not arg:
            raise UsageError("/save needs a name", hint="e.g. /save my-notes")
        target = copy_session(self.run.session, self.home, validate_name(arg))
        self.terminal.say(
            f"saved a copy as {target.id} ({target.path}); resume it with /load {target.id}"
        )
        return False

    async def cmd_load(self, arg: str) -> bool:
        if not arg:
            raise UsageError("/load needs a session name", hint="/sessions lists them")
        name = validate_name(arg)
        if name == self.run.session.id:
            self.terminal.say(f"already in session {name}")
            return False
        if not (self.home / "sessions" / name).is_dir():
            raise UsageError(
                f"no session {name} in {self.home / 'sessions'}", hint="/sessions lists them"
            )
        # Open (and lock) the new session before letting go of the current one, so a failure
        # leaves the person where they were.
        opts = replace(self.opts, chat=name, resume=None)
        new = Run(self.plan, opts, sinks=[self.sink], confirm=self.confirm)
        await self.run.end(outcome_of(None, finished="switched"))
        self.run, self.opts = new, opts
        count = len(new.session.messages())
        self.terminal.say(f"switched to session {name} ({count} messages)")
        return False

    async def cmd_sessions(self, arg: str) -> bool:
        rows = list_sessions(self.home)
        if not rows:
            self.terminal.say(f"no sessions in {self.home / 'sessions'}")
            return False
        width = max(len(r.id) for r in rows[:20])
        lines = []
        for info in rows[:20]:
            mark = "*" if info.id == self.run.session.id else " "
            lines.append(f"{mark} {info.row(width)}")
        if len(rows) > 20:
            lines.append(f"  … {len(rows) - 20} older (nex sessions lists all)")
        self.terminal.say("\n".join(lines))
        return False

    async def cmd_quit(self, arg: str) -> bool:
        return True


SHELL_TIMEOUT = 120.0  # seconds a `!cmd` may run
SHELL_LINES = 200  # lines of its output shown (and sent, with !!cmd)
SHELL_SHARED_CHARS = 20_000  # characters of a `!!cmd` output sent to the model


def shared_output(command: str, code: int | None, lines: list[str]) -> str:
    """A `!!cmd` output as the model reads it, capped."""
    body = "\n".join(lines)
    if len(body) > SHELL_SHARED_CHARS:
        body = body[:SHELL_SHARED_CHARS] + f"\n[... cut at {SHELL_SHARED_CHARS:,} characters]"
    return f"[I ran `{command}` (exit {code}); its output:]\n```\n{body}\n```"


def approval_choices(name: str, prefix: str | None) -> str:
    """The line under an approval question that says what each answer does."""
    parts = [
        "y yes",
        "n no (n REASON tells the model why)",
        f"a always {name} in this session",
    ]
    if prefix is not None:
        parts.append(f"p always `{prefix} …` commands in this session")
    return "  " + " · ".join(parts)


# name -> (handler, usage, what it does); /help prints them in this order.
COMMANDS: dict[str, tuple[CommandHandler, str, str]] = {
    "help": (Repl.cmd_help, "/help", "list commands and keys"),
    "clear": (Repl.cmd_clear, "/clear", "start a fresh conversation in this session"),
    "tokens": (Repl.cmd_tokens, "/tokens", "context used and tokens spent"),
    "compact": (Repl.cmd_compact, "/compact", "shrink the conversation to free context now"),
    "model": (Repl.cmd_model, "/model [NAME [URL]]", "the model, or switch to NAME"),
    "undo": (Repl.cmd_undo, "/undo [N]", "revert the file changes of the last N turns"),
    "diff": (Repl.cmd_diff, "/diff", "what this session changed in the work dir"),
    "save": (Repl.cmd_save, "/save NAME", "copy this session to a new session NAME"),
    "load": (Repl.cmd_load, "/load NAME", "switch to the session NAME"),
    "sessions": (Repl.cmd_sessions, "/sessions", "list sessions, newest first"),
    "quit": (Repl.cmd_quit, "/quit", "leave (Ctrl-D does too)"),
    "exit": (Repl.cmd_quit, "/exit", "the same as /quit"),
}


def _context(used: int, window: int | None) -> str:
    """`1,234/8,192 (15%)`; a handler that cannot count reports 0, shown as `–`."""
    shown = f"{used:,}" if used else "–"
    if not window:
        return shown
    percent = f" ({100 * used // window}%)" if used else ""
    return f"{shown}/{window:,}{percent}"


def _key_bindings(
    busy: Condition,
    enqueue: Callable[[Buffer], None],
    cancel: Callable[[Buffer, str], None],
) -> KeyBindings:
    """Enter sends; Alt-Enter / Esc Enter (and Ctrl-J) add a line.

    prompt-toolkit's multiline mode is used for the editing (arrows move between lines) with
    Enter rebound to submit. A bracketed paste inserts its newlines without submitting. While
    a line is being handled (`busy`), Enter queues the text and Esc or Ctrl-C cancel the answer.
    """
    kb = KeyBindings()

    @kb.add("enter")
    def _submit(event: KeyPressEvent) -> None:
        if busy():
            enqueue(event.current_buffer)
        else:
            event.current_buffer.validate_and_handle()

    @kb.add("escape", filter=busy)
    def _cancel_by_escape(event: KeyPressEvent) -> None:
        cancel(event.current_buffer, "Esc")

    @kb.add("c-c", filter=busy)
    def _cancel_by_ctrl_c(event: KeyPressEvent) -> None:
        cancel(event.current_buffer, "^C")

    @kb.add("escape", "enter")
    @kb.add("c-j")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return kb


def run_repl(plan: SpawnPlan, opts: RunOptions, first_message: str | None = None) -> int:
    """Talk to the agent in this terminal until the person leaves; return the exit code."""

    async def main() -> int:
        repl = Repl(plan, opts)
        return await repl.main(first_message)

    # Not a TTY on stdin: prompt-toolkit would fail obscurely; the CLI never gets here then.
    if not os.isatty(sys.stdin.fileno()):
        raise UsageError("the REPL needs a terminal", hint='pass --autonomous "TASK" instead')
    return asyncio.run(main())
