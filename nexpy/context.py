"""Fitting the conversation into the model's context window: the one policy, in one place.

Every request nex's loop sends fits the model's window. Before it leaves, the history is
normalized and counted (nexpy.messages.RequestBuilder); a history over budget is compacted (the
ladder of nexpy.compaction, with a summary of what it removed asked of the model); a server that
still refuses a request for its size gets a compacted retry, until compaction cannot help and the
run stops with `LimitReached` (exit 3). The parts it uses: nexpy.budget (tokens and the arithmetic
of a window), nexpy.window (learning the window), nexpy.compaction (what to drop or shorten).

`Context` owns the history as it is sent (the agent appends to it; compaction replaces it, each
step journaled first, so a resume sees what the model saw) and what the requests cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nexpy import compaction
from nexpy.budget import PER_REQUEST, REMINDER_TOKENS, TARGET, Budget
from nexpy.errors import ContextOverflow, LimitReached, ProviderError
from nexpy.events import Emit
from nexpy.handler import Totals
from nexpy.messages import RequestBuilder, with_note
from nexpy.reply import Model, Reply, TextCallback
from nexpy.session import Session
from nexpy.tools import ToolContext
from nexpy.window import Window

CONTEXT_FULL_HINT = (
    "start the model server with a bigger window (llama.cpp -c, Ollama num_ctx) and pass "
    "--context-window, /compact or /clear in the REPL, or split the task"
)
OVERFLOW_RETRIES = 3  # compacted retries after the server refuses a request for its size
SUMMARY_TOKENS = 1024  # the most a summary of removed turns may take
COMPACTION_PASSES = 3  # per request; a pass that frees nothing ends them early

Tools = list[dict[str, Any]] | None


@dataclass(frozen=True)
class Request:
    """One request ready to send: the normalized messages and what they cost."""

    messages: list[dict[str, Any]]
    counted: int  # our own token count (cl100k), before the drift correction
    used: int  # the corrected estimate: what the server will likely count


class Context:
    """The history of one conversation, kept within one model's window."""

    def __init__(
        self,
        budget: Budget,
        *,
        history: list[dict[str, Any]],
        system_prompt: str,
        model: Model,
        session: Session,
        emit: Emit,
        totals: Totals,
        tool_ctx: ToolContext,
        schemas: Tools,
        discover: Callable[[], Awaitable[Window]] | None = None,
    ) -> None:
        self.budget = budget
        self.history = history
        self.system_prompt = system_prompt
        self.model = model
        self.session = session
        self.emit = emit
        self.totals = totals
        self.tool_ctx = tool_ctx
        self.schemas = schemas  # what a request with tools carries
        self.used = 0  # the estimate of the last request sent (the status bar shows it)
        self.processed: int | None = None  # prompt tokens the server processed, if it said
        self.builder = RequestBuilder(budget.counter)
        self._discover = discover
        self._window_asked = discover is None  # the server is asked once, before a request
        self._output_ceiling = tool_ctx.output_cap
        self._outputs_sized = False  # on the first request: sizing loads tiktoken
        self._reminded = False  # the window-nearly-full note went out since the last compaction
        # The last request sent and how much of the history it carried: what the server's
        # prompt cache holds, so a summary asked after it costs only the question.
        self._sent: tuple[int, list[dict[str, Any]]] | None = None

    # -- the window -----------------------------------------------------------------------
    async def ensure_window(self) -> None:
        """Learn the model's context window (flag, config, server, litellm) unless known."""
        if not self._window_asked and self._discover is not None:
            found = await self._discover()
            self._window_asked = True
            self.budget.adopt(found.tokens, found.source)
            if found.warning:
                self.emit("warning", message=found.warning)
            self._outputs_sized = False
        if not self._outputs_sized:
            # The REPL runs this just after its prompt is drawn: the tokenizer loads off the loop.
            await asyncio.to_thread(self.budget.counter.load)
            self._size_outputs()
            self._outputs_sized = True

    # -- requests -------------------------------------------------------------------------
    def build(self, tools: Tools) -> Request:
        """The normalized request for the current history. Changes nothing: reminders and
        compaction are `fit`'s job."""
        messages, counted = self.builder.build(self.system_prompt, self.history)
        counted += self.budget.counter.tools(tools)
        return Request(messages, counted, self.budget.estimate(counted))

    async def complete(self, tools: Tools, on_text: TextCallback) -> Reply:
        """Send the history, compacted to fit; on an overflow refusal compact further and retry."""
        # What the last refused request asked for: its tokens (our count) plus its max_tokens,
        # since some servers refuse when the two together exceed the window.
        refused: int | None = None
        for _ in range(OVERFLOW_RETRIES + 1):
            request = await self.fit(tools)
            if refused is not None and request.counted + self.budget.max_output >= refused:
                raise self._full("compaction cannot make the request any smaller", request)
            self.used = request.used
            self._sent = (len(self.history), request.messages)
            self.emit("context", used=request.used, window=self.budget.window)
            try:
                reply = await self.model.complete(
                    request.messages, tools, on_text, max_tokens=self.budget.max_output
                )
            except ContextOverflow as e:
                refused = request.counted + self.budget.max_output
                change = self.budget.overflowed(request.counted, e.n_ctx)
                self.emit("warning", message=f"{e.message}; {change}; compacting and retrying")
                self._size_outputs()
                continue
            if reply.usage:
                self.budget.observe(request.counted, reply.usage.get("prompt_tokens"))
            self._account(reply)
            return reply
        raise self._full(f"the server refused {OVERFLOW_RETRIES + 1} requests for size", request)

    async def fit(self, tools: Tools) -> Request:
        """The request for the current history, compacted first if it is over budget."""
        await self.ensure_window()
        request = self.build(tools)
        if self._remind(request, tools):
            request = self.build(tools)
        # Compaction works on its own per-message count; normalizing (merges, a folded reminder)
        # can leave the real request a little over, so go again while that still helps.
        for _ in range(COMPACTION_PASSES):
            if self.budget.fits(request.used):
                return request
            await self._compact(request, tools, force=False)
            smaller = self.build(tools)
            shrank = smaller.counted < request.counted
            request = smaller
            if not shrank:
                break
        if not self.budget.fits(request.used):
            raise self._full("the messages that must stay do not fit", request)
        return request

    def _remind(self, request: Request, tools: Tools) -> bool:
        """Tell the model the window is nearly full, once between compactions.

        The note is appended to the newest message, the one this request is the first to carry,
        and journaled, so every later request (and a resume) sends those same bytes: a prompt
        cache keeps everything before it. Compaction clears it with the rest."""
        # A request about to be compacted gets none: it would outlive the compaction.
        if (
            self._reminded
            or not self.history
            or not self.budget.fits(request.used + REMINDER_TOKENS)
        ):
            return False
        note = self.budget.reminder(request.counted, self._fixed(tools))
        if note is None:
            return False
        self._reminded = True
        self.history[-1] = with_note(self.history[-1], note)
        self.session.append("reminder", text=note)
        return True

    # -- compaction -----------------------------------------------------------------------
    async def compact(self, tools: Tools) -> str:
        """Compact now, even under budget (the REPL's /compact); what was done, in a line."""
        await self.ensure_window()
        return await self._compact(self.build(tools), tools, force=True)

    def clear(self) -> None:
        """Forget the conversation; journaled as a compaction to nothing, so a resume agrees."""
        self.history = []
        self._reminded = False
        self._sent = None
        self.session.append("compaction", messages=[], reason="clear")

    async def _compact(self, request: Request, tools: Tools, *, force: bool) -> str:
        """Compact the history `request` was built from; `force` compacts even under budget.

        One event does it all (see nexpy.compaction): every turn that may go goes, and the
        model's summary takes their place. When the model gives no summary, only the oldest
        turns go, down to about half the room, with a note saying so. The new history is
        journaled once it is whole: a crash before that leaves the old one, compacted again on
        resume.
        """
        fixed = self._fixed(tools)
        room = self.budget.room(fixed)
        target = int(room * TARGET)
        if force:
            target = min(target, (request.counted - fixed) // 2)
        reserve = self._summary_tokens(room)

        def shrink(*, summarized: bool) -> compaction.Shrunk:
            return compaction.shrink(
                self.history,
                self.budget.counter,
                target=target,
                # A history this close to full gets the reminder folded in: leave room for it.
                limit=room - REMINDER_TOKENS,
                reserve=reserve,
                outputs_dir=self.tool_ctx.outputs_dir,
                summarized=summarized,
            )

        shrunk = shrink(summarized=True)
        summary = None
        if shrunk.note is not None:
            summary = await self._summarize(shrunk, reserve, request, tools)
            if summary is None:
                shrunk = shrink(summarized=False)
        if not shrunk.steps:
            return f"nothing to compact: {request.used:,} tokens in context"
        done: list[str] = []
        for step in shrunk.steps:
            self._replace_history(step.history, step=step.name, **step.detail)
            if "outputs" in step.detail:
                done.append(f"{step.detail['outputs']} tool outputs moved to files")
        if shrunk.note is not None:
            if summary:
                self._replace_history(
                    compaction.with_summary(self.history, shrunk.note, summary, shrunk.covered),
                    step="summary",
                    removed=shrunk.covered,
                )
            done.append(f"{shrunk.covered} messages {'summarized' if summary else 'removed'}")
        self.used = self.build(tools).used
        line = (
            f"context compacted from {request.used:,} to {self.used:,} tokens of "
            f"{self.budget.window:,}: {', '.join(done)}"
        )
        if not force:  # /compact shows the line it returns; unasked compaction says so here
            self.emit("warning", message=line)
        self.emit("context", used=self.used, window=self.budget.window)
        return line

    async def _summarize(
        self, shrunk: compaction.Shrunk, tokens: int, sent: Request, tools: Tools
    ) -> str | None:
        """The model's summary of what compaction removes, or None if it cannot give one.

        Asked, with the same system prompt and tools, at the end of the conversation as the
        server last saw it when all that goes was in that request: its prompt cache holds all
        of it, so the server processes only the question (the newest step, which stays, is not
        processed twice). Else at the end of `sent`, the request about to go. When that does
        not fit the window, or the server refuses it for its size (which teaches the window),
        or the model calls a tool instead, in a request of its own with the removed messages as
        a transcript."""
        counter = self.budget.counter
        words = tokens * 2 // 3
        base = sent.messages
        if self._sent is not None:
            carried, last = self._sent
            earlier = {id(m) for m in self.history[:carried]}
            if all(id(m) in earlier for m in shrunk.dropped):
                base = last
        here: list[dict[str, Any]] | None = compaction.summary_here(base, words)
        asked = counter.messages(base, tools) + counter.text(compaction.SUMMARIZE_HERE) + words // 2
        for _ in range(OVERFLOW_RETRIES + 2):
            prompt_room = int(
                (self.budget.window - tokens - self.budget.margin) / self.budget.ratio - PER_REQUEST
            )
            with_tools: Tools
            if here is not None and asked <= prompt_room:
                messages, with_tools = here, tools
            else:
                messages = compaction.summary_request(
                    shrunk.dropped, counter, room=prompt_room, words=words
                )
                with_tools = None
            # A request is going out, as before any other: its wait (the whole conversation to
            # prefill, a long summary to write) shows as progress, never as a hang.
            counted = counter.messages(messages, with_tools)
            self.emit("context", used=self.budget.estimate(counted), window=self.budget.window)
            try:
                reply = await self.model.complete(
                    messages, with_tools, lambda _: None, max_tokens=tokens
                )
            except ContextOverflow as e:
                change = self.budget.overflowed(counted, e.n_ctx)
                self.emit("warning", message=f"{e.message}; {change}; summarizing again")
                self._size_outputs()
                here = None  # a request of its own, sized to what the server said
                continue
            except ProviderError as e:
                self.emit(
                    "warning", message=f"could not summarize the removed messages: {e.line()}"
                )
                return None
            self._account(reply)
            text = reply.content.strip()
            if text and not reply.tool_calls:
                return compaction.clip(text, counter, tokens)
            if with_tools is None:
                return None
            here = None  # it called a tool: ask again, with no tools to call
        return None

    def _replace_history(self, history: list[dict[str, Any]], **fields: Any) -> None:
        """Adopt a compacted history, journaled first: on resume it replaces what came before."""
        self.session.append("compaction", reason="context", messages=history, **fields)
        self.history = history
        self._reminded = False
        self._sent = None

    # -- sizes ----------------------------------------------------------------------------
    def _account(self, reply: Reply) -> None:
        """Add what the server says a request cost to the run's totals, and announce it."""
        if reply.usage:
            # What the server had to process of the prompt, when it says (its prompt cache).
            self.processed = reply.usage.get("processed_tokens")
            self.totals.input_tokens += reply.usage.get("prompt_tokens", 0)
            self.totals.output_tokens += reply.usage.get("completion_tokens", 0)
            self.emit("usage", **reply.usage)

    def _summary_tokens(self, room: int) -> int:
        """Room kept for the summary of removed turns: an eighth of the history room."""
        return max(64, min(SUMMARY_TOKENS, room // 8))

    def _fixed(self, tools: Tools) -> int:
        """Tokens every request carries whatever the history (our count): system prompt, tool
        schemas, framing."""
        return (
            self.builder.system_tokens(self.system_prompt)
            + self.budget.counter.tools(tools)
            + PER_REQUEST
        )

    def _size_outputs(self) -> None:
        """Cap each tool output to a share of the window, so one result cannot fill it."""
        # Sized for a request with tools: one without (a summary) never runs a tool.
        self.tool_ctx.output_cap = self.budget.output_chars(
            self._fixed(self.schemas), self._output_ceiling
        )

    def _full(self, why: str, request: Request) -> LimitReached:
        return LimitReached(
            f"the context is full: {why} ({request.used:,} tokens; the window is "
            f"{self.budget.window:,} from {self.budget.source}, {self.budget.max_output:,} "
            "of them kept for the reply)",
            reason="context_limit",
            hint=CONTEXT_FULL_HINT,
        )
