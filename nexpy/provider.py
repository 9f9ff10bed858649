"""The model call: `LitellmModel`, one request through `litellm.acompletion`, with its retry policy.

A request streams, with an idle timeout ($NEX_IDLE_TIMEOUT, default 600 s) between chunks and
before the first. Whatever it raises is classified (nexpy.classify); transient failures are
retried (at most four attempts, jittered backoff, a 429's Retry-After honoured) and text an
earlier attempt already showed is not shown again (nexpy.reply). A 200 stream with no answer in
it is retried once unstreamed, which turns llama-cpp-python's silent template and context errors
into their real messages. A server whose own output parser keeps failing on what the model
writes (llama.cpp's HTTP 500) is asked for the raw text instead, from then on (nexpy.rawtext).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from nexpy import adapt, litellm_setup, reasoning
from nexpy.classify import classify, stalled
from nexpy.errors import BadRequestError, ConfigError, ProviderError, UnparsedOutput
from nexpy.integrity import check_stream
from nexpy.reply import Dedup, EmptyReply, Reply, ReplyReader, TextCallback

if TYPE_CHECKING:
    from nexpy.plan import SpawnPlan

Sleep = Callable[[float], Awaitable[None]]

IDLE_TIMEOUT_ENV = "NEX_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 600.0  # a big prompt on a CPU can take minutes before the first token


def idle_timeout_from_env() -> float:
    """Seconds without data before a request counts as stalled: $NEX_IDLE_TIMEOUT or 600."""
    raw = os.environ.get(IDLE_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_IDLE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(
            f"{IDLE_TIMEOUT_ENV}={raw!r} is not a positive number of seconds",
            hint=f"unset it or set e.g. {IDLE_TIMEOUT_ENV}=120",
        )
    return value


class LitellmModel:
    """Streams a chat completion through `litellm.acompletion`, with retries and an idle timeout."""

    def __init__(
        self,
        plan: SpawnPlan,
        *,
        window: int | None = None,
        idle_timeout: float | None = None,
        connect_timeout: float = 30.0,
        max_attempts: int = 4,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[ProviderError, int, float], None] | None = None,
        adaptations: Iterable[str] = (),
        on_adapt: Callable[[adapt.Rule, ProviderError], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.name = str(plan.spec)
        self.where = plan.endpoint or plan.spec.route.prefix
        self.window = window  # sent where the route takes it (window_param)
        self.idle_timeout = idle_timeout if idle_timeout is not None else idle_timeout_from_env()
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.on_retry = on_retry
        # The rules of nexpy.adapt this endpoint's template needs, learned from its refusals.
        self.adaptations: list[str] = list(adaptations)
        self.on_adapt = on_adapt
        self.on_warning = on_warning
        # The server's output parser failed on this model after every retry: from then on,
        # ask for raw text (nexpy.rawtext) rather than send requests it will refuse again.
        self.raw_text = False
        # Thinking goes back in history only to a template that reads it (nexpy.reasoning);
        # a model seen streaming a bare </think> starts its next streams inside a think.
        self.keeps_reasoning = reasoning.keeps_reasoning(plan.model)
        self.inside_think = False

    def request_kwargs(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        stream: bool,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        """The arguments of `litellm.acompletion` for one request (nex doctor sends its own)."""
        kwargs: dict[str, Any] = {
            "model": self.plan.litellm_model,
            "messages": messages,
            "stream": stream,
            "timeout": self.idle_timeout,
            "num_retries": 0,
            "max_retries": 0,
            # With tools, litellm imports its MCP gateway (needs the `mcp` package, absent on a
            # base install) to check for MCP tools; nex never sends any, so skip the check.
            "_skip_mcp_handler": True,
        }
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        if self.plan.endpoint:
            kwargs["api_base"] = self.plan.endpoint
        # The openai client insists on a key; local servers ignore this placeholder.
        kwargs["api_key"] = self.plan.api_key() or "sk-no-key-required"
        if self.plan.headers:
            kwargs["extra_headers"] = dict(self.plan.headers)
        if tools:
            kwargs["tools"] = tools
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        param = self.plan.spec.route.window_param
        if param and self.window:
            kwargs[param] = self.window  # the window nex budgets against (Ollama's num_ctx)
        self._add_settings(kwargs)
        return kwargs

    def _add_settings(self, kwargs: dict[str, Any]) -> None:
        """The user's configured request settings (nexpy.plan.model_settings), and only those.
        top_k and min_p are not OpenAI fields: they go in the body as llama.cpp, vLLM and
        Ollama's OpenAI API read them. A configured max_tokens lowers nex's own, never raises
        it: the context budget reserved that much for the reply."""
        s = self.plan.settings
        for key in ("temperature", "top_p", "reasoning_effort"):
            if key in s:
                kwargs[key] = s[key]
        if "max_tokens" in s:
            ours = kwargs.get("max_tokens")
            kwargs["max_tokens"] = min(s["max_tokens"], ours) if ours else s["max_tokens"]
        body = (
            dict(self.plan.spec.route.body)
            | {k: s[k] for k in ("top_k", "min_p") if k in s}
            | s.get("extra_body", {})
        )
        if body:
            kwargs["extra_body"] = body

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        dedup = Dedup(on_text)
        attempt = 0
        stream = True
        while True:
            attempt += 1
            dedup.new_attempt()
            try:
                return await self._attempt(messages, tools, dedup, max_tokens, stream=stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = classify(exc, self.plan, idle_timeout=self.idle_timeout)
                if self._adapt_to(error):
                    attempt -= 1  # the same request, reshaped: not a failed attempt
                    continue
                if self._fall_back_to_raw(error, attempt):
                    attempt = 0  # a new kind of request: its own attempts
                    continue
                if not error.retryable or attempt >= self.max_attempts:
                    if attempt > 1 and error.retryable:
                        error.message += f" (after {attempt} attempts)"
                    raise error from exc
                # After an empty stream, stay unstreamed: the server streams nothing here.
                stream = stream and not isinstance(error, EmptyReply)
                delay = backoff(attempt, error.retry_after)
                if self.on_retry:
                    self.on_retry(error, attempt, delay)
                await self.sleep(delay)

    def _fall_back_to_raw(self, error: ProviderError, attempt: int) -> bool:
        """After the retries, a parser failure switches this model to raw text, once, where the
        server is llama.cpp-like (an OpenAI-compatible route: it has /apply-template)."""
        route = self.plan.spec.route
        if (
            not isinstance(error, UnparsedOutput)
            or attempt < self.max_attempts
            or self.raw_text
            or not (route.coalesces and route.native_api is None and self.plan.endpoint)
        ):
            return False
        self.raw_text = True
        if self.on_warning is not None:
            self.on_warning(
                f"{error.message} {attempt} times; asking it for the raw text from now on "
                "(tools described in the prompt, calls recovered by nex)"
            )
        return True

    def _adapt_to(self, error: ProviderError) -> bool:
        """Learn the adaptation a template's refusal asks for; whether there was a new one.

        Bounded: each rule is learned once, so a refusal no rule answers ends as before."""
        if not isinstance(error, BadRequestError):
            return False
        rule = adapt.learn(error.refusal, self.adaptations)
        if rule is None:
            return False
        self.adaptations.append(rule.name)
        if self.on_adapt is not None:
            self.on_adapt(rule, error)
        return True

    async def _attempt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        max_tokens: int | None,
        *,
        stream: bool,
    ) -> Reply:
        # Never block the loop (Ctrl-C) on the import; once loaded, no thread hop per request.
        lm = litellm_setup.loaded()
        if lm is None:
            lm = await asyncio.to_thread(litellm_setup.litellm)
        sent_messages, sent_tools = reasoning.for_history(messages, self.keeps_reasoning), tools
        if self.raw_text:
            return await self._raw_attempt(sent_messages, tools, on_text, max_tokens)
        if self.adaptations:
            body = adapt.apply(self.adaptations, {"messages": sent_messages, "tools": tools})
            sent_messages, sent_tools = body["messages"], body.get("tools")
        kwargs = self.request_kwargs(
            sent_messages, sent_tools, stream=stream, max_tokens=max_tokens
        )
        if self.plan.spec.route.coalesces:
            from nexpy.coalesce import coalescing_client  # httpx: not before the first request

            kwargs["client"] = coalescing_client(self.plan.endpoint)
        try:
            # A deadline on this task, not wait_for's task of its own: one less task and its
            # loop iterations per request (and acompletion runs as a bare call to it does).
            async with asyncio.timeout(self.connect_timeout + self.idle_timeout):
                response = await lm.acompletion(**kwargs)
        except TimeoutError:
            raise stalled(self.where, self.idle_timeout, mid_answer=False) from None
        # The tools offered, even when the request carried them in its prompt (tools-in-prompt):
        # calls the model writes as text are recovered by name.
        reader = ReplyReader(tools, on_text, inside_think=self.inside_think)
        if not stream:
            reader.add(response)
            return reader.reply(self.where, "application/json")
        loop = asyncio.get_running_loop()
        try:
            # One deadline, pushed back at every chunk: a task per chunk (wait_for) costs more
            # than everything nex does with the chunk.
            async with asyncio.timeout(self.idle_timeout) as deadline:
                async for chunk in response:
                    reader.add(chunk)
                    deadline.reschedule(loop.time() + self.idle_timeout)
        except TimeoutError:
            raise stalled(self.where, self.idle_timeout, mid_answer=reader.answered) from None
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        headers = getattr(response, "_response_headers", None) or {}
        if reader.answered:  # an empty stream is its own case (EmptyReply)
            check_stream(response, self.where)  # nexpy.integrity: the server ended it, or a cut
        reply = reader.reply(self.where, str(headers.get("content-type", "")))
        self.inside_think = self.inside_think or reader.think.bare_close
        return reply

    async def _raw_attempt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        max_tokens: int | None,
    ) -> Reply:
        """One request for the raw text (nexpy.rawtext), read as an unstreamed answer."""
        from nexpy import rawtext
        from nexpy.coalesce import coalescing_client

        assert self.plan.endpoint is not None  # _fall_back_to_raw requires one
        kwargs = self.request_kwargs([], None, stream=False, max_tokens=max_tokens)
        # The model by its name on the wire, and the user's sampling settings.
        fields: dict[str, Any] = {"model": self.plan.model, **kwargs.get("extra_body", {})}
        fields |= {k: kwargs[k] for k in ("max_tokens", "temperature", "top_p") if k in kwargs}
        headers = {
            "Authorization": f"Bearer {kwargs['api_key']}",
            **kwargs.get("extra_headers", {}),
        }
        body = await asyncio.wait_for(
            rawtext.complete(
                coalescing_client(self.plan.endpoint).client,
                self.plan.endpoint,
                messages=messages,
                tools=tools,
                adaptations=self.adaptations,
                headers=headers,
                fields=fields,
            ),
            self.connect_timeout + self.idle_timeout,
        )
        reader = ReplyReader(tools, on_text)
        reader.add(body)
        return reader.reply(self.where, "application/json")


def backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; a server's Retry-After wins (capped at 60 s)."""
    if retry_after is not None:
        return min(retry_after, 60.0)
    base = 0.5 * (2 ** (attempt - 1))
    return base * (0.5 + random.random())
