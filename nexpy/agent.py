"""The agent loop: one user message in, model and tool rounds until an answer without tools.

Persistence lives in one place (`_record`): every message is appended to the journal before the
next step, so a crash at any point loses at most the step in flight. Control flow is carried
by exceptions: provider errors and `LimitReached` end the run; `asyncio.CancelledError` (Ctrl-C)
ends the current message but leaves a history a strict server still accepts.

Every request fits the model's window: the history and the policy that keeps it within the
window are nexpy.context's; the limits of a run (turns, time) are nexpy.limits'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nexpy import adapt, instructions
from nexpy.approval import declined
from nexpy.budget import DEFAULT_WINDOW, Budget
from nexpy.context import Context
from nexpy.demo import DemoModel
from nexpy.errors import LimitReached, ProviderError, UsageError
from nexpy.events import Emitter
from nexpy.handler import Confirm, HandlerOptions, TextCallback, Totals
from nexpy.limits import Limits, LoopGuard, summary_prompt
from nexpy.messages import INTERRUPTED, assistant, text_of, tool_result, user
from nexpy.plan import SpawnPlan
from nexpy.provider import LitellmModel
from nexpy.reasoning import FIELD as REASONING_FIELD
from nexpy.reasoning import Thought, template_reads_reasoning
from nexpy.reply import Model, Reply
from nexpy.session import Session
from nexpy.toolcalls import parse_arguments
from nexpy.tools import Tool, ToolContext, ToolResult, all_tools, execute, schemas
from nexpy.tools.files import preview
from nexpy.undo import Recorder
from nexpy.window import Window, discover

# finish_reason "length": the server ended the answer at the output limit (not a cut stream).
CALL_AT_LIMIT = (
    "error: this call's arguments were truncated: the answer reached the output limit "
    "(max_tokens) inside them, so it was not run; send it again, smaller (e.g. write a long "
    "file in parts)"
)
ANSWER_AT_LIMIT = (
    "the model's answer stopped at the output limit (finish_reason: length): it is incomplete; "
    "ask it to continue, or raise max_tokens in the model's settings"
)
# What the model is told at its next turn, appended to that user message (nothing earlier in the
# history is rewritten, so every request still extends the one before byte for byte).
CUT_NOTE = (
    "[nex] Your previous answer was cut off at the output limit (max_tokens): the user saw it "
    "incomplete. Continue where it stopped if it matters, and keep answers shorter."
)
CUT_ENTRY = "answer_cut"  # journaled after a cut answer, so a resumed session tells the model too

SYSTEM_PROMPT = """\
You are nex, a coding agent. You work in the directory {workdir}; tool paths are relative to it.
Use the tools to read, search, change files and run commands. Make small, verifiable steps.
When the task is done, answer with a short summary and call no tool."""


class Agent:
    """Runs the conversation of one session against one model."""

    def __init__(
        self,
        model: Model,
        *,
        session: Session,
        emitter: Emitter,
        tools: dict[str, Tool],
        ctx: ToolContext,
        budget: Budget,
        system_prompt: str | None = None,
        limits: Limits | None = None,
        confirm: Confirm | None = None,
        window: Callable[[], Awaitable[Window]] | None = None,
    ) -> None:
        self.session = session
        self.emit = emitter.emit
        self.tools = tools
        self.schemas = schemas(tools)
        self.ctx = ctx
        self.limits = limits or Limits()
        self.loop_guard = LoopGuard()
        self.undo = Recorder(session, ctx.workdir)
        # Numbers the user messages of the session: undo reverts by these turns.
        self.turn_no = sum(
            1
            for e in session.entries()
            if e.get("kind") == "message" and e.get("message", {}).get("role") == "user"
        )
        # The last answer stopped at the output limit; its note goes with the next user message.
        self.answer_cut = _last_answer_cut(session.entries())
        self.confirm = confirm
        self.totals = Totals()
        self.started = time.monotonic()
        self.context = Context(
            budget,
            history=[m for m in session.messages() if m.get("role") != "system"],
            system_prompt=system_prompt or SYSTEM_PROMPT.format(workdir=ctx.workdir),
            model=model,
            session=session,
            emit=self.emit,
            totals=self.totals,
            tool_ctx=ctx,
            schemas=self.schemas,
            discover=window,
        )

    # -- public ---------------------------------------------------------------------------
    @property
    def model(self) -> Model:
        """The model every request of this conversation goes to (held by the context)."""
        return self.context.model

    @model.setter
    def model(self, model: Model) -> None:
        self.context.model = model

    @property
    def budget(self) -> Budget:
        return self.context.budget

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.context.history

    @property
    def window(self) -> int | None:
        return self.context.budget.window

    @property
    def context_used(self) -> int:
        return self.context.used

    @property
    def prompt_processed(self) -> int | None:
        """Prompt tokens the server processed for the last request (the rest it had cached),
        when it reports them."""
        return self.context.processed

    async def compact(self) -> str:
        """Compact the conversation now (the REPL's /compact); returns what was done, in a line."""
        return await self.context.compact(self.schemas)

    async def ensure_window(self) -> None:
        """Learn the model's context window (flag, config, server, litellm) unless known."""
        await self.context.ensure_window()

    async def clear(self) -> None:
        """Forget the conversation (the REPL's /clear); the journal keeps the old one."""
        self.context.clear()

    def add_note(self, text: str) -> None:
        """Tell the model something happened outside the conversation (the REPL's /undo)."""
        self._record(user(text))

    async def aclose(self) -> None:
        """Nothing to release: the HTTP pool lives as long as the event loop (nexpy.coalesce), and
        the session belongs to Run."""

    async def send(self, text: str, on_text: TextCallback | None = None) -> str:
        """Add a user message and run until the model answers without calling a tool."""
        if self.answer_cut:
            text, self.answer_cut = f"{text}\n\n{CUT_NOTE}", False
        self._record(user(text))
        self.turn_no += 1
        self.loop_guard = LoopGuard()  # a new message breaks any streak
        async with self.limits.deadline(self.started):
            while True:
                self.limits.check_turns(self.totals.turns)
                reply = await self._request(on_text, self.schemas)
                if not reply.tool_calls:
                    if reply.finish_reason == "length":
                        self.answer_cut = True
                        self.session.append(CUT_ENTRY)
                        self.emit("warning", message=ANSWER_AT_LIMIT)
                    return reply.content
                calls, cut = reply.tool_calls, None
                if reply.finish_reason == "length":
                    # The server stopped at max_tokens inside the last call: its arguments are
                    # cut (a "repaired" JSON would run half a command or write half a file).
                    calls, cut = calls[:-1], calls[-1]
                await self._run_tools(calls)
                if cut is not None:
                    self.emit("tool.call", id=cut["id"], name=cut["function"]["name"], arguments={})
                    self._record_result(cut, ToolResult(False, CALL_AT_LIMIT), 0.0)

    async def wrap_up(self, reason: str, on_text: TextCallback | None = None) -> str:
        """After a limit: one last request without tools, asking for a summary."""
        if reason == "context_limit":
            return ""  # nothing more fits: a request for a summary would be refused too
        self._record(user(summary_prompt(reason)))
        reply = await self._request(on_text, None)
        return reply.content

    # -- steps ----------------------------------------------------------------------------
    async def _request(
        self, on_text: TextCallback | None, tools: list[dict[str, Any]] | None
    ) -> Reply:
        self.totals.turns += 1
        self.emit("turn.started", turn=self.totals.turns)
        shown: list[str] = []

        def stream(piece: str) -> None:
            if not isinstance(piece, Thought):  # an interrupted answer keeps only its text
                shown.append(piece)
            if on_text is not None:
                on_text(piece)

        try:
            reply = await self.context.complete(tools, stream)
        except asyncio.CancelledError:
            partial = "".join(shown)
            if partial.strip():
                self._record(assistant(partial + "\n[interrupted by the user]"))
            raise
        if reply.reasoning:
            self.emit("reasoning", content=reply.reasoning)
        if reply.content.strip() or reply.tool_calls:
            message = assistant(reply.content or None, reply.tool_calls or None)
            if reply.reasoning:  # journaled with its turn; sent back where read (nexpy.reasoning)
                message[REASONING_FIELD] = reply.reasoning
            self._record(message, final=not reply.tool_calls)
        return reply

    async def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        answered: set[str] = set()
        try:
            for group in self._groups(calls):
                nudges = [self._loop_nudge(call) for call in group]
                if len(group) == 1:  # the common case: no task of its own to gather
                    results = [await self._run_one(group[0])]
                else:
                    results = await asyncio.gather(*(self._run_one(call) for call in group))
                for call, nudge, (result, seconds) in zip(group, nudges, results, strict=True):
                    if nudge:
                        result = replace(result, output=f"{result.output}\n\n{nudge}")
                    self._record_result(call, result, seconds)
                    answered.add(call["id"])
        except (asyncio.CancelledError, LimitReached) as e:
            # Every call gets its result, so the history stays one a strict server accepts.
            text = INTERRUPTED if isinstance(e, asyncio.CancelledError) else f"error: {e.message}"
            for call in calls:
                if call["id"] not in answered:
                    self._record_result(call, ToolResult(False, text), 0.0)
            raise

    def _loop_nudge(self, call: dict[str, Any]) -> str:
        """The stuck-loop rule (nexpy.limits.LoopGuard) for one call, before it runs."""
        raw = call["function"].get("arguments")
        try:
            key = json.dumps(parse_arguments(raw), sort_keys=True)
        except (ValueError, TypeError):
            key = str(raw)
        return self.loop_guard.see(call["function"]["name"], key)

    def _groups(self, calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Consecutive read-only calls run together; a mutating call runs alone, in order."""
        groups: list[list[dict[str, Any]]] = []
        previous_reads = False
        for call in calls:
            tool = self.tools.get(call["function"]["name"])
            reads = tool is not None and not tool.mutating
            if reads and previous_reads:
                groups[-1].append(call)
            else:
                groups.append([call])
            previous_reads = reads
        return groups

    async def _run_one(self, call: dict[str, Any]) -> tuple[ToolResult, float]:
        name = call["function"]["name"]
        raw = call["function"].get("arguments")
        start = time.monotonic()
        tool = self.tools.get(name)
        try:
            args = parse_arguments(raw)
        except ValueError as e:
            self.emit("tool.call", id=call["id"], name=name, arguments=raw)
            return ToolResult(False, f"error: {e}; send the call again with valid JSON"), 0.0
        self.emit("tool.call", id=call["id"], name=name, arguments=args)
        if tool is None:
            known = ", ".join(sorted(self.tools))
            return ToolResult(False, f"error: unknown tool {name!r}; available tools: {known}"), 0.0
        if tool.mutating and self.confirm is not None:
            diff = await asyncio.to_thread(preview, name, args, self.ctx)
            verdict = await self.confirm(name, args, diff)
            if verdict is not True:  # False, or the reason the person gave for no
                reason = verdict if isinstance(verdict, str) else ""
                return ToolResult(False, declined(reason)), 0.0
        if not tool.mutating:
            return await execute(tool, args, self.ctx, call["id"]), time.monotonic() - start
        # The pre-image first (journaled and fsynced), so even a kill -9 mid-call is undoable.
        try:
            token = await asyncio.to_thread(self.undo.before, call["id"], name, args, self.turn_no)
        except OSError as e:
            token = None
            self.emit("warning", message=f"cannot keep the pre-image for undo: {e}")
        try:
            result = await execute(tool, args, self.ctx, call["id"])
        finally:
            with contextlib.suppress(OSError):
                await asyncio.shield(asyncio.to_thread(self.undo.after, call["id"], token))
        return result, time.monotonic() - start

    # -- persistence: the one place a message enters history and journal ------------------
    def _record(
        self,
        message: dict[str, Any],
        *,
        final: bool = True,
        with_entry: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Add `message` to history and journal; `with_entry`: (kind, fields) of an entry
        journaled with it in the same write (one fsync for a tool's result and its execution
        record)."""
        self.context.history.append(message)
        if with_entry is None:
            self.session.append("message", message=message)
        else:
            self.session.append_all(("message", {"message": message}), with_entry)
        if message["role"] in ("user", "assistant"):
            fields: dict[str, Any] = {"role": message["role"], "content": text_of(message)}
            if message["role"] == "assistant":
                fields["final"] = final
            self.emit("message", **fields)

    def _record_result(self, call: dict[str, Any], result: ToolResult, seconds: float) -> None:
        name = call["function"]["name"]
        execution = {
            "id": call["id"],
            "name": name,
            "ok": result.ok,
            "truncated": result.truncated,
            "full_path": result.full_path,
            "duration_s": round(seconds, 3),
        }
        self._record(
            tool_result(call["id"], result.output, name), with_entry=("tool_execution", execution)
        )
        self.emit(
            "tool.result",
            id=call["id"],
            name=name,
            ok=result.ok,
            output=result.output,
            truncated=result.truncated,
        )


def _last_answer_cut(entries: list[dict[str, Any]]) -> bool:
    """Whether the session's last answer was cut at the output limit (a CUT_ENTRY after it)."""
    for entry in reversed(entries):
        if entry.get("kind") in (CUT_ENTRY, "message"):
            return bool(entry.get("kind") == CUT_ENTRY)
    return False


ADAPTATIONS_FILE = "adaptations.json"  # in the state dir: what each endpoint's template needs


def build_model(plan: SpawnPlan, emitter: Emitter, session: Session | None = None) -> Model:
    """The Model for an in-process plan: the embedded stub or litellm.

    With a session, the chat-template adaptations learned for this endpoint and model (by
    this run or an earlier one, nexpy.adapt) are sent from the first request, and a new one is
    announced once, journaled and remembered in the state dir."""
    if plan.spec.route.embedded:
        if plan.model not in ("demo", ""):
            raise UsageError(
                f"unknown stub model {plan.model!r}", hint="the embedded model is stub:demo"
            )
        return DemoModel(plan.model or "demo")

    def on_retry(error: ProviderError, attempt: int, delay: float) -> None:
        emitter.emit(
            "warning",
            message=f"{error.message}; retrying in {delay:.1f} s (attempt {attempt + 1})",
        )

    def on_warning(message: str) -> None:
        emitter.emit("warning", message=message)

    store = adapt.LearnedStore(session.path.parent.parent / ADAPTATIONS_FILE) if session else None
    where = plan.endpoint or plan.spec.route.prefix

    def on_adapt(rule: adapt.Rule, refusal: ProviderError) -> None:
        emitter.emit(
            "warning",
            message=f"the chat template at {where} refused the request; adapting it from now "
            f"on: {rule.name} ({rule.summary})",
        )
        if session is not None and store is not None:
            session.append("adaptation", rule=rule.name, refusal=refusal.message)
            store.add(where, plan.model, rule.name)

    return LitellmModel(
        plan,
        window=plan.context_window or DEFAULT_WINDOW,
        on_retry=on_retry,
        adaptations=store.get(where, plan.model) if store else (),
        on_adapt=on_adapt,
        on_warning=on_warning,
    )


def create(plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions) -> Agent:
    """The `nex` handler: this module's loop on a litellm (or embedded) model."""
    model = build_model(plan, emitter, session)

    async def window() -> Window:
        found = await discover(plan)
        # Asked before the first request: a published template that reads the thinking keeps
        # it in history from the start (nexpy.reasoning), whatever the model is called.
        if found.template and isinstance(model, LitellmModel):
            model.keeps_reasoning |= template_reads_reasoning(found.template)
        return found

    return Agent(
        model,
        window=window,
        session=session,
        emitter=emitter,
        tools=all_tools(read_only=opts.read_only),
        ctx=ToolContext(
            workdir=opts.workdir.resolve(),
            outputs_dir=session.outputs_dir,
            # The whole state dir (<home>/sessions/<id>) is hidden: every session's journal.
            sandbox=plan.sandbox.hiding(Path.home(), session.path.parent.parent),
        ),
        budget=Budget(plan.context_window, plan.provenance.get("context_window", "default")),
        system_prompt=instructions.system_prompt(
            opts.system_prompt or SYSTEM_PROMPT.format(workdir=opts.workdir.resolve()),
            opts.instructions,
        ),
        limits=opts.limits,
        confirm=None if opts.yes else opts.confirm,
    )
