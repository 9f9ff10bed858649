"""The agent loop: one user message in, model and tool rounds until an answer without tools.

Persistence lives in one place (`_record`): every message is appended to the journal before the
next step, so a crash at any point loses at most the step in flight. Control flow is carried
by exceptions: provider errors and `LimitReached` end the run; `asyncio.CancelledError` (Ctrl-C)
ends the current message but leaves a history a strict server still accepts.

Every request fits the model's window (nexpy.budget): before it leaves, a history over budget
is compacted (nexpy.compaction), and a server that still refuses it for its size gets a
compacted retry, until compaction cannot help and the run stops with `LimitReached`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nexpy import compaction
from nexpy.budget import PER_REQUEST, REMINDER_TOKENS, TARGET, Budget, RequestBuilder
from nexpy.demo import DemoModel
from nexpy.errors import ContextOverflow, LimitReached, ProviderError, UsageError
from nexpy.events import Emitter
from nexpy.handler import Confirm, HandlerOptions, TextCallback, Totals
from nexpy.messages import INTERRUPTED, assistant, text_of, tool_result, user
from nexpy.plan import SpawnPlan
from nexpy.provider import LitellmModel, Model, Reply
from nexpy.session import Session
from nexpy.toolcalls import parse_arguments
from nexpy.tools import Tool, ToolContext, ToolResult, all_tools, execute, schemas
from nexpy.window import Window, discover

SYSTEM_PROMPT = """\
You are nex, a coding agent. You work in the directory {workdir}; tool paths are relative to it.
Use the tools to read, search, change files and run commands. Make small, verifiable steps.
When the task is done, answer with a short summary and call no tool."""

SUMMARY_REQUEST = (
    "[nex] The run reached its {what} limit. Do not call any tool. Summarize what you did, "
    "what is left to do, and how to continue."
)
CONTEXT_FULL_HINT = (
    "start the model server with a bigger window (llama.cpp -c, Ollama num_ctx) and pass "
    "--context-window, /compact or /clear in the REPL, or split the task"
)
OVERFLOW_RETRIES = 3  # compacted retries after the server refuses a request for its size
SUMMARY_TOKENS = 1024  # the most a summary of removed turns may take
COMPACTION_PASSES = 3  # per request; a pass that frees nothing ends them early


@dataclass
class Limits:
    max_turns: int | None = None
    max_time: float | None = None


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
        self.model = model
        self.session = session
        self.emit = emitter.emit
        self.tools = tools
        self.schemas = schemas(tools)
        self.ctx = ctx
        self.budget = budget
        self.system_prompt = system_prompt or SYSTEM_PROMPT.format(workdir=ctx.workdir)
        self.limits = limits or Limits()
        self.confirm = confirm
        self.totals = Totals()
        self.started = time.monotonic()
        self.context_used = 0
        self.history: list[dict[str, Any]] = [
            m for m in session.messages() if m.get("role") != "system"
        ]
        self.builder = RequestBuilder(budget.counter)
        self._raw = 0  # our own count of the last request built, before the drift correction
        self._discover = window  # asked once, before the first request
        self._output_ceiling = ctx.output_cap
        self._sized = False  # tool outputs are sized on the first request: it loads tiktoken

    # -- public ---------------------------------------------------------------------------
    @property
    def window(self) -> int | None:
        return self.budget.window

    async def compact(self) -> str:
        """Compact the conversation now (the REPL's /compact); returns what was done, in a line."""
        await self.ensure_window()
        self.build_request(self.schemas)
        return await self._compact(self.schemas, force=True)

    async def ensure_window(self) -> None:
        """Learn the model's context window (flag, config, server, litellm) unless known."""
        if self._discover is not None:
            found = await self._discover()
            self._discover = None
            self.budget.adopt(found.tokens, found.source)
            if found.warning:
                self.emit("warning", message=found.warning)
            self._sized = False
        if not self._sized:
            self._size_outputs()
            self._sized = True

    async def clear(self) -> None:
        """Forget the conversation; journaled as a compaction to nothing, so a resume agrees."""
        self.history = []
        self.session.append("compaction", messages=[], reason="clear")

    async def aclose(self) -> None:
        """Nothing to release: the model client is per request, the session belongs to Run."""

    async def send(self, text: str, on_text: TextCallback | None = None) -> str:
        """Add a user message and run until the model answers without calling a tool."""
        self._record(user(text))
        deadline = None
        if self.limits.max_time is not None:
            deadline = asyncio.get_running_loop().time() + max(
                0.0, self.limits.max_time - (time.monotonic() - self.started)
            )
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    self._check_turns()
                    reply = await self._request(on_text, self.schemas)
                    if not reply.tool_calls:
                        return reply.content
                    await self._run_tools(reply.tool_calls)
        except TimeoutError:
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                raise LimitReached(
                    f"time limit of {self.limits.max_time:g} s reached",
                    reason="max_time",
                    hint="raise --max-time or continue with --chat",
                ) from None
            raise

    async def wrap_up(self, reason: str, on_text: TextCallback | None = None) -> str:
        """After a limit: one last request without tools, asking for a summary."""
        if reason == "context_limit":
            return ""  # nothing more fits: a request for a summary would be refused too
        what = {"max_turns": "turn", "max_time": "time"}.get(reason, reason)
        self._record(user(SUMMARY_REQUEST.format(what=what)))
        reply = await self._request(on_text, None)
        return reply.content

    # -- steps ----------------------------------------------------------------------------
    def _check_turns(self) -> None:
        if self.limits.max_turns is not None and self.totals.turns >= self.limits.max_turns:
            raise LimitReached(
                f"turn limit of {self.limits.max_turns} reached",
                reason="max_turns",
                hint="raise --max-turns or continue with --chat",
            )

    def build_request(self, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The normalized request for the current history, with any context reminder folded in.

        Sets `context_used` to its estimated size. Never compacts: that is `_fit`'s job.
        """
        request, raw = self.builder.build(self.system_prompt, self.history)
        raw += self.budget.counter.tools(tools)
        note = self.budget.reminder(raw, self._fixed_raw(tools))
        if note:
            request = self.builder.fold(request, [note])
            raw += self.budget.counter.text(note) + 1
        self._raw = raw
        self.context_used = self.budget.estimate(raw)
        return request

    async def _request(
        self, on_text: TextCallback | None, tools: list[dict[str, Any]] | None
    ) -> Reply:
        self.totals.turns += 1
        self.emit("turn.started", turn=self.totals.turns)
        shown: list[str] = []

        def stream(piece: str) -> None:
            shown.append(piece)
            if on_text is not None:
                on_text(piece)

        try:
            reply = await self._complete_fitted(tools, stream)
        except asyncio.CancelledError:
            partial = "".join(shown)
            if partial.strip():
                self._record(assistant(partial + "\n[interrupted by the user]"))
            raise
        if reply.usage:
            self.totals.input_tokens += reply.usage.get("prompt_tokens", 0)
            self.totals.output_tokens += reply.usage.get("completion_tokens", 0)
            self.emit("usage", **reply.usage)
        if reply.content.strip() or reply.tool_calls:
            self._record(
                assistant(reply.content or None, reply.tool_calls or None),
                final=not reply.tool_calls,
            )
        return reply

    async def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        answered: set[str] = set()
        try:
            for group in self._groups(calls):
                results = await asyncio.gather(*(self._run_one(call) for call in group))
                for call, (result, seconds) in zip(group, results, strict=True):
                    self._record_result(call, result, seconds)
                    answered.add(call["id"])
        except asyncio.CancelledError:
            for call in calls:
                if call["id"] not in answered:
                    self._record_result(call, ToolResult(False, INTERRUPTED), 0.0)
            raise

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
        if tool.mutating and self.confirm is not None and not await self.confirm(name, args):
            return ToolResult(False, "error: the user declined this tool call"), 0.0
        result = await execute(tool, args, self.ctx, call["id"])
        return result, time.monotonic() - start

    # -- the context budget: window, compaction, overflow recovery -------------------------
    async def _complete_fitted(
        self, tools: list[dict[str, Any]] | None, stream: TextCallback
    ) -> Reply:
        """Send the history, compacted to fit; on an overflow refusal compact further and retry."""
        # What the last refused request asked for: its tokens (our count) plus its max_tokens,
        # since some servers refuse when the two together exceed the window.
        refused: int | None = None
        for _ in range(OVERFLOW_RETRIES + 1):
            request = await self._fit(tools)
            if refused is not None and self._raw + self.budget.max_output >= refused:
                raise self._context_full("compaction cannot make the request any smaller")
            self.emit("context", used=self.context_used, window=self.budget.window)
            sent = self._raw
            try:
                reply = await self.model.complete(
                    request, tools, stream, max_tokens=self.budget.max_output
                )
            except ContextOverflow as e:
                refused = sent + self.budget.max_output
                change = self.budget.overflowed(sent, e.n_ctx)
                self.emit("warning", message=f"{e.message}; {change}; compacting and retrying")
                self._size_outputs()
                continue
            if reply.usage:
                self.budget.observe(sent, reply.usage.get("prompt_tokens"))
            return reply
        raise self._context_full(f"the server refused {OVERFLOW_RETRIES + 1} requests for size")

    async def _fit(self, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The request for the current history, compacted first if it is over budget."""
        await self.ensure_window()
        request = self.build_request(tools)
        # Compaction works on its own per-message count; normalizing (merges, a folded reminder)
        # can leave the real request a little over, so go again while that still helps.
        for _ in range(COMPACTION_PASSES):
            if self.budget.fits(self.context_used):
                return request
            before = self._raw
            await self._compact(tools, force=False)
            request = self.build_request(tools)
            if self._raw >= before:
                break
        if not self.budget.fits(self.context_used):
            raise self._context_full("the messages that must stay do not fit")
        return request

    async def _compact(self, tools: list[dict[str, Any]] | None, *, force: bool) -> str:
        """Run the compaction ladder on the history; `force` compacts even under budget.

        Each step is journaled as it lands, so a crash in the middle (or during the summary
        request) resumes from a history that already fits.
        """
        before = self.context_used
        fixed = self._fixed_raw(tools)
        room = self.budget.room(fixed)
        history_raw = self._raw - fixed
        target = int(room * TARGET)
        if force:
            target = min(target, history_raw // 2)
        reserve = self._summary_tokens(room)
        shrunk = compaction.shrink(
            self.history,
            self.budget.counter,
            target=target,
            # A history this close to full gets the reminder folded in: leave room for it.
            limit=room - REMINDER_TOKENS,
            reserve=reserve,
            outputs_dir=self.ctx.outputs_dir,
            force=force,
        )
        if not shrunk.steps:
            return f"nothing to compact: {before:,} tokens in context"
        done: list[str] = []
        for step in shrunk.steps:
            self._replace_history(step.history, step=step.name, **step.detail)
            if "outputs" in step.detail:
                done.append(f"{step.detail['outputs']} tool outputs moved to files")
        if shrunk.note is not None:
            summary = await self._summarize(shrunk, reserve)
            if summary:
                self._replace_history(
                    compaction.with_summary(self.history, shrunk.note, summary, shrunk.covered),
                    step="summary",
                    removed=shrunk.covered,
                )
            done.append(f"{shrunk.covered} messages {'summarized' if summary else 'removed'}")
        self.build_request(tools)
        line = (
            f"context compacted from {before:,} to {self.context_used:,} tokens of "
            f"{self.budget.window:,}: {', '.join(done)}"
        )
        if not force:  # /compact shows the line it returns; unasked compaction says so here
            self.emit("warning", message=line)
        self.emit("context", used=self.context_used, window=self.budget.window)
        return line

    async def _summarize(self, shrunk: compaction.Shrunk, tokens: int) -> str | None:
        """The model's summary of what compaction removed, or None if it cannot give one."""
        prompt_room = (
            self.budget.window - tokens - self.budget.margin
        ) / self.budget.ratio - PER_REQUEST
        request = compaction.summary_request(
            shrunk.dropped, self.budget.counter, room=int(prompt_room), words=tokens * 2 // 3
        )
        try:
            reply = await self.model.complete(request, None, lambda _: None, max_tokens=tokens)
        except ProviderError as e:
            self.emit("warning", message=f"could not summarize the removed messages: {e.line()}")
            return None
        if reply.usage:
            self.totals.input_tokens += reply.usage.get("prompt_tokens", 0)
            self.totals.output_tokens += reply.usage.get("completion_tokens", 0)
            self.emit("usage", **reply.usage)
        text = reply.content.strip()
        return compaction.clip(text, self.budget.counter, tokens) if text else None

    def _summary_tokens(self, room: int) -> int:
        """Room kept for the summary of removed turns: an eighth of the history room."""
        return max(64, min(SUMMARY_TOKENS, room // 8))

    def _fixed_raw(self, tools: list[dict[str, Any]] | None) -> int:
        """Raw tokens every request carries whatever the history: system prompt, tools, framing."""
        return (
            self.builder.system_tokens(self.system_prompt)
            + self.budget.counter.tools(tools)
            + PER_REQUEST
        )

    def _size_outputs(self) -> None:
        """Cap each tool output to a share of the window, so one result cannot fill it."""
        self.ctx.output_cap = self.budget.output_chars(
            self._fixed_raw(self.schemas), self._output_ceiling
        )

    def _replace_history(self, history: list[dict[str, Any]], **fields: Any) -> None:
        """Adopt a compacted history, journaled first: on resume it replaces what came before."""
        self.session.append("compaction", reason="context", messages=history, **fields)
        self.history = history

    def _context_full(self, why: str) -> LimitReached:
        need = self.context_used
        return LimitReached(
            f"the context is full: {why} ({need:,} tokens; the window is "
            f"{self.budget.window:,} from {self.budget.source}, {self.budget.max_output:,} "
            "of them kept for the reply)",
            reason="context_limit",
            hint=CONTEXT_FULL_HINT,
        )

    # -- persistence: the one place a message enters history and journal ------------------
    def _record(
        self, message: dict[str, Any], *, final: bool = True, also: dict[str, Any] | None = None
    ) -> None:
        """Add `message` to history and journal; `also`: the fields of an entry journaled with
        it in the same write (one fsync for a tool's result and its execution record)."""
        self.history.append(message)
        if also is None:
            self.session.append("message", message=message)
        else:
            self.session.append_all(("message", {"message": message}), (also.pop("kind"), also))
        if message["role"] in ("user", "assistant"):
            fields: dict[str, Any] = {"role": message["role"], "content": text_of(message)}
            if message["role"] == "assistant":
                fields["final"] = final
            self.emit("message", **fields)

    def _record_result(self, call: dict[str, Any], result: ToolResult, seconds: float) -> None:
        name = call["function"]["name"]
        execution = {
            "kind": "tool_execution",
            "id": call["id"],
            "name": name,
            "ok": result.ok,
            "truncated": result.truncated,
            "full_path": result.full_path,
            "duration_s": round(seconds, 3),
        }
        self._record(tool_result(call["id"], result.output, name), also=execution)
        self.emit(
            "tool.result",
            id=call["id"],
            name=name,
            ok=result.ok,
            output=result.output,
            truncated=result.truncated,
        )


def build_model(plan: SpawnPlan, emitter: Emitter) -> Model:
    """The Model for an in-process plan: the embedded stub or litellm."""
    if plan.spec.route.prefix == "stub":
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

    return LitellmModel(plan, on_retry=on_retry)


def create(plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions) -> Agent:
    """The `nex` handler: this module's loop on a litellm (or embedded) model."""
    return Agent(
        build_model(plan, emitter),
        window=functools.partial(discover, plan),
        session=session,
        emitter=emitter,
        tools=all_tools(read_only=opts.read_only),
        ctx=ToolContext(workdir=opts.workdir.resolve(), outputs_dir=session.outputs_dir),
        budget=Budget(plan.context_window, plan.provenance.get("context_window", "default")),
        system_prompt=opts.system_prompt,
        limits=Limits(opts.max_turns, opts.max_time),
        confirm=None if opts.yes else opts.confirm,
    )
