"""Assembling a run: plan + session + model + agent + events, and the autonomous runner.

The CLI and the REPL both start a `Run`; it owns the session lock, the `init`/`end` journal
entries and the `session.started`/`session.ended` events, so every run is bracketed the same way
whatever ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nexpy import instructions
from nexpy.approval import Mode
from nexpy.config import global_config_path
from nexpy.credentials import hold_run_keys, redact
from nexpy.errors import EXIT_INTERRUPTED, LimitReached, NexError
from nexpy.events import Emitter, JsonSink, ProgressSink, Sink
from nexpy.handler import Confirm, Handler, HandlerOptions, load_factory
from nexpy.instructions import Instructions, load, restore
from nexpy.limits import output_limit
from nexpy.outcome import Outcome, outcome_of
from nexpy.plan import SpawnPlan
from nexpy.progress import Progress, Ticker
from nexpy.session import Session, state_home

WRAP_UP_SECONDS = 120.0


@dataclass
class RunOptions:
    handler: HandlerOptions = field(default_factory=lambda: HandlerOptions(Path.cwd()))
    chat: str | None = None
    resume: str | None = None  # None: a new session; "": the latest; else a pattern
    json: bool = False
    verbose: bool = False
    home: Path | None = None
    notify_after: float | None = None  # config `notify`: the REPL rings after this many seconds
    approval: Mode = "ask"  # config `approval`, or yolo with --yes (nexpy.approval)


def open_session(opts: RunOptions) -> Session:
    """Create or resume the session the options name, and take its lock."""
    home = opts.home or state_home()
    if opts.chat:
        session = Session.open_or_create(home, opts.chat)
    elif opts.resume is not None:
        session = Session.latest(home, opts.resume or None)
    else:
        session = Session.create(home)
    try:
        session.lock()
    except BaseException:
        session.close()
        raise
    return session


class Run:
    """One process's use of one session."""

    def __init__(
        self,
        plan: SpawnPlan,
        opts: RunOptions,
        sinks: list[Sink],
        *,
        confirm: Confirm | None = None,
    ) -> None:
        self.plan = plan
        self.opts = opts
        # Before anything can run a tool: the in-process loop's tools must not find the keys in
        # nex's environment; a wrapped CLI needs its own in its environment.
        hold_run_keys(plan.api_key_env, plan.header_secrets, withdraw=plan.handler == "nex")
        self.emitter = Emitter(sinks=sinks)
        self.started = time.monotonic()
        self.session = open_session(opts)
        self.emitter.session = self.session.id
        try:
            entries = self.session.entries()
            resumed = bool(entries)
            workdir = opts.handler.workdir.resolve()
            self.instructions, fresh = _instructions(plan, opts.handler, workdir, entries)
            # Build the handler first: one that cannot start (a missing binary) must not leave
            # an `init` without an `end` behind.
            factory = load_factory(plan)
            self.agent: Handler = factory(
                plan,
                self.session,
                self.emitter,
                replace(
                    opts.handler,
                    workdir=workdir,
                    confirm=confirm,
                    instructions=self.instructions.text,
                ),
            )
            self.session.append(
                "init",
                model=str(plan.spec),
                handler=plan.handler,
                endpoint=plan.endpoint,
                cwd=str(workdir),
                plan=plan.line(),
                resumed=resumed,
                sandbox=plan.sandbox.describe(),
            )
            if fresh:
                self.session.append("instructions", **self.instructions.as_entry())
        except BaseException:
            self.session.close()
            if not resumed_or_used(self.session):
                shutil.rmtree(self.session.path, ignore_errors=True)  # it holds nothing
            raise
        for warning in [*self.session.warnings, *self.instructions.warnings]:
            self.emitter.emit("warning", message=warning)
        self.emitter.emit(
            "session.started",
            model=str(plan.spec),
            handler=plan.handler,
            endpoint=plan.endpoint,
            plan=plan.line(),
            resumed=resumed,
            sandbox=plan.sandbox.describe(),
            instructions=self.instructions.files,
        )
        self.ended = False

    async def end(self, outcome: Outcome) -> None:
        """Journal and announce the end of this run; release the session. Runs once."""
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(Exception):
            await self.agent.aclose()
        totals = self.agent.totals
        fields: dict[str, Any] = {
            "status": outcome.status,
            "exit_reason": outcome.exit_reason,
            "turns": totals.turns,
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        try:
            self.session.append("end", **fields)
        finally:
            self.session.close()
            self.emitter.emit("session.ended", **fields)


def _instructions(
    plan: SpawnPlan, opts: HandlerOptions, workdir: Path, entries: list[dict[str, Any]]
) -> tuple[Instructions, bool]:
    """The project instructions of this run, and whether they are new (to be journaled).

    Read once, when the session starts; a resumed session keeps the text it journaled then, so
    its system prompt stays byte-stable. The claude/codex CLIs read their own files.
    """
    if plan.handler != "nex" or not opts.project_doc:
        return Instructions(), False
    if entries:
        return restore(entries) or Instructions(), False
    kept = load(
        workdir,
        global_config_path().parent,
        max_tokens=opts.project_doc_max_tokens or instructions.MAX_TOKENS,
    )
    return kept, True


def resumed_or_used(session: Session) -> bool:
    """Whether a session folder holds anything worth keeping."""
    try:
        return bool(session.entries())
    except OSError:
        return True  # unreadable: not ours to delete


def report(error: NexError, *, verbose: bool = False) -> None:
    """The one line a failure ends in, on stderr (a server's words in it redacted, since a 401
    body may echo the key)."""
    print(redact(f"nex: error: {error.line()}"), file=sys.stderr, flush=True)
    if verbose and error.__cause__ is not None:
        print_traceback(error.__cause__)


def print_traceback(exc: BaseException) -> None:
    """A traceback on stderr for -v, with secrets redacted like everything else nex writes."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    print(redact(text), file=sys.stderr, end="", flush=True)


FORCE_EXIT_AFTER = 3  # the signal that ends the process at once, cleanup or not


@contextlib.contextmanager
def cancel_on(*signals: signal.Signals) -> Iterator[None]:
    """While inside, the first of `signals` cancels the current task, so a run ends through its
    own cleanup (journal `end`, `session.ended`) instead of dying mid-step.

    A person hammering Ctrl-C sends more: the second is ignored, so the cleanup it would cancel
    still writes the journal; the third exits at once, with 130 all the same (every journal
    entry is fsynced as written, so the session still resumes). This holds after the block too,
    until the process is gone: a signal that lands while the event loop shuts down must not
    kill the process by the signal instead of exit 130.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received = 0

    def on_signal() -> None:
        nonlocal received
        received += 1
        if received == 1 and task is not None:
            task.cancel()
        elif received >= FORCE_EXIT_AFTER:
            _force_exit()

    installed: list[signal.Signals] = []
    for sig in signals:
        # No signal support here (not the main thread, or a platform without it): run on.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if received:

                def late(signum: int, frame: object) -> None:
                    on_signal()

                signal.signal(sig, late)


def _force_exit() -> None:
    with contextlib.suppress(Exception):
        print("nex: interrupted again; exiting now", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


async def run_autonomous(plan: SpawnPlan, opts: RunOptions, message: str) -> int:
    """Run one task to completion without prompts; return the exit code."""
    with cancel_on(signal.SIGINT, signal.SIGTERM):
        return await _run_autonomous(plan, opts, message)


async def _run_autonomous(plan: SpawnPlan, opts: RunOptions, message: str) -> int:
    # On a terminal, a status line says what the server is doing (never when stderr is a file).
    live = None if opts.json or not sys.stderr.isatty() else Ticker(Progress()).start()
    sinks: list[Sink] = (
        [JsonSink()] if opts.json else [ProgressSink(verbose=opts.verbose, live=live)]
    )
    run = Run(plan, opts, sinks)
    # Until the task has finished, the run has failed: a crash must never be journaled as a
    # completion.
    outcome = outcome_of(RuntimeError("the run did not finish"))
    try:
        try:
            answer = await run.agent.send(message, live.progress.text if live else None)
        finally:
            if live is not None:
                live.close()  # before the answer, an error line or "interrupted" is printed
        _answer(answer, opts)
        # An answer cut at the output limit is not a finished task (the warning said so).
        outcome = outcome_of(output_limit() if run.agent.answer_cut else None)
    except LimitReached as e:
        outcome = outcome_of(e)
        run.emitter.emit("warning", message=e.line())
        report(e, verbose=opts.verbose)
        with contextlib.suppress(Exception):
            summary = await asyncio.wait_for(run.agent.wrap_up(e.reason), WRAP_UP_SECONDS)
            _answer(summary, opts)
    except NexError as e:
        outcome = outcome_of(e)
        run.emitter.emit("error", kind=e.kind, message=e.line(), retryable=e.retryable)
        report(e, verbose=opts.verbose)
    except asyncio.CancelledError as e:
        outcome = outcome_of(e)
        print("nex: interrupted; resume with --chat or --resume", file=sys.stderr)
    except Exception as e:  # a bug: one line (-v: the traceback), journaled as a failure
        outcome = outcome_of(e)
        error = internal_error(e)
        run.emitter.emit("error", kind=error.kind, message=error.line(), retryable=False)
        report(error, verbose=opts.verbose)
    finally:
        await run.end(outcome)
    return outcome.code


def internal_error(exc: Exception) -> NexError:
    """A bug, as the one line it ends in (the traceback with -v)."""
    error = NexError(
        f"internal error: {type(exc).__name__}: {exc}",
        hint="this is a bug in nex; run with -v for the traceback and report it",
    )
    error.kind = "internal"
    error.__cause__ = exc
    return error


def _answer(text: str, opts: RunOptions) -> None:
    """The final answer is the only thing autonomous mode writes to stdout (without --json)."""
    if not opts.json and text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
