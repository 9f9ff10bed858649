"""The agent loop: one user message in, model and tool rounds until an answer without tools.

Persistence lives in one place (`_record`): every message is appended to the journal before the
next step, so a crash at any point loses at most the step in flight. Control flow is carried
by exceptions: provider errors and `LimitReached` end the run; `asyncio.CancelledError` (Ctrl-C)
ends the current message but leaves a history a strict server still accepts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nexpy.budget import Budget
from nexpy.demo import DemoModel
from nexpy.errors import LimitReached, ProviderError, UsageError
from nexpy.events import Emitter
from nexpy.handler import Confirm, HandlerOptions, TextCallback, Totals
from nexpy.messages import INTERRUPTED, assistant, normalize, system, text_of, tool_result, user
from nexpy.plan import SpawnPlan
from nexpy.provider import LitellmModel, Model, Reply, parse_arguments
from nexpy.session import Session
from nexpy.tools import Tool, ToolContext, ToolResult, all_tools, execute, schemas

SYSTEM_PROMPT = """\
You are nex, a coding agent. You work in the directory {workdir}; tool paths are relative to it.
Use the tools to read, search, change files and run commands. Make small, verifiable steps.
When the task is done, answer with a short summary and call no tool."""

SUMMARY_REQUEST = (
    "[nex] The run reached its {what} limit. Do not call any tool. Summarize what you did, "
    "what is left to do, and how to continue."
)


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

    # -- public ---------------------------------------------------------------------------
    @property
    def window(self) -> int | None:
        return self.budget.window

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
        """The normalized request for the current history, with any context reminder folded in."""
        request = normalize([system(self.system_prompt), *self.history])
        self.context_used = self.budget.used(request, tools)
        note = self.budget.reminder(self.context_used)
        if note:
            request = normalize(request, reminders=[note])
        return request

    async def _request(
        self, on_text: TextCallback | None, tools: list[dict[str, Any]] | None
    ) -> Reply:
        self.totals.turns += 1
        self.emit("turn.started", turn=self.totals.turns)
        request = self.build_request(tools)
        self.emit("context", used=self.context_used, window=self.budget.window)
        shown: list[str] = []

        def stream(piece: str) -> None:
            shown.append(piece)
            if on_text is not None:
                on_text(piece)

        try:
            reply = await self.model.complete(request, tools, stream)
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

    # -- persistence: the one place a message enters history and journal ------------------
    def _record(self, message: dict[str, Any], *, final: bool = True) -> None:
        self.history.append(message)
        self.session.append("message", message=message)
        if message["role"] in ("user", "assistant"):
            fields: dict[str, Any] = {"role": message["role"], "content": text_of(message)}
            if message["role"] == "assistant":
                fields["final"] = final
            self.emit("message", **fields)

    def _record_result(self, call: dict[str, Any], result: ToolResult, seconds: float) -> None:
        name = call["function"]["name"]
        self._record(tool_result(call["id"], result.output, name))
        self.session.append(
            "tool_execution",
            id=call["id"],
            name=name,
            ok=result.ok,
            truncated=result.truncated,
            full_path=result.full_path,
            duration_s=round(seconds, 3),
        )
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
        session=session,
        emitter=emitter,
        tools=all_tools(read_only=opts.read_only),
        ctx=ToolContext(workdir=opts.workdir.resolve(), outputs_dir=session.outputs_dir),
        budget=Budget(plan.context_window, plan.provenance.get("context_window", "default")),
        system_prompt=opts.system_prompt,
        limits=Limits(opts.max_turns, opts.max_time),
        confirm=None if opts.yes else opts.confirm,
    )
