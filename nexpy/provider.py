"""The model call: one `Model` protocol, one litellm-backed implementation.

litellm is heavy (≈2.8 s, ≈2,600 modules) and chatty, so this module never imports it at import
time. `start_background_import()` begins loading it in a thread at launch; `litellm()` waits for
it. Environment hygiene (DESIGN §8) happens exactly once, before the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from nexpy.errors import (
    AuthError,
    BadRequestError,
    ContextOverflow,
    NotFoundError,
    ProviderError,
    TransientError,
)
from nexpy.plan import SpawnPlan

TextCallback = Callable[[str], None]


@dataclass
class Reply:
    """One complete model answer."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str | None = None


class Model(Protocol):
    """What the agent loop needs from a model: a complete answer, text streamed as it comes."""

    name: str

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply: ...


# -- litellm loading ------------------------------------------------------------------------
_lock = threading.Lock()
_thread: threading.Thread | None = None
_module: ModuleType | None = None
_import_error: BaseException | None = None


def prepare_environment() -> None:
    """Set what must be set before litellm (or tiktoken) is imported. Idempotent."""
    # Never fetch the cost map (5 s on a hanging network), never load a .env from the cwd.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # tiktoken downloads its encodings; litellm ships cl100k/o200k/p50k: use those offline.
        spec = importlib.util.find_spec("litellm")
        if spec and spec.submodule_search_locations:
            bundled = Path(next(iter(spec.submodule_search_locations)))
            tokenizers = bundled / "litellm_core_utils" / "tokenizers"
            if tokenizers.is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizers)


def _import() -> None:
    global _module, _import_error
    try:
        prepare_environment()
        import litellm as lm

        lm.suppress_debug_info = True  # it prints banners to stdout otherwise
        lm.disable_hf_tokenizer_download = True  # token_counter stalls 23 s offline
        lm.telemetry = False
        lm.drop_params = True  # local servers reject params they do not know
        import logging

        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
        _module = lm
    except BaseException as e:  # surfaced to the caller of litellm()
        _import_error = e


def start_background_import() -> None:
    """Begin importing litellm in a daemon thread so no prompt ever waits for it."""
    global _thread
    with _lock:
        if _thread is None and _module is None:
            _thread = threading.Thread(target=_import, name="litellm-import", daemon=True)
            _thread.start()


def litellm() -> ModuleType:
    """The litellm module, waiting for the background import if it is still running."""
    start_background_import()
    assert _thread is not None
    _thread.join()
    if _module is None:
        raise ProviderError(f"cannot load litellm: {_import_error}", hint="reinstall nexpy")
    return _module


# -- errors ---------------------------------------------------------------------------------
_N_CTX = re.compile(r'"?n_ctx"?\s*[:=]\s*(\d+)')
_MAX_CTX = re.compile(r"maximum context length is (\d+)")
_OVERFLOW_MARKERS = (
    "exceed_context_size_error",
    "context_length_exceeded",
    "maximum context length",
    "exceeds the available context size",
    "context window",
    "llama_decode returned 1",
)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    # litellm prefixes its own class names; the person wants the server's words.
    text = re.sub(r"^(litellm\.)?\w+(Error|Exception)?:\s*", "", text)
    text = re.sub(r"^(litellm\.)?\w+Exception - ", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (litellm wraps three or four deep)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _transport_failure(exc: BaseException, where: str) -> ProviderError | None:
    """A failure to talk to the server at all, named by its real cause, or None.

    litellm reports a refused connection as "InternalServerError 500: Connection error.";
    the truth is at the bottom of the exception chain.
    """
    import socket
    import ssl

    chain = _chain(exc)
    hint = "is the model server running? check -e, or run: nex doctor"
    for cause in reversed(chain):
        if isinstance(cause, socket.gaierror):
            return ProviderError(
                f"cannot resolve the host of {where} ({cause.strerror or cause})",
                hint="check the host name in -e",
            )
        if isinstance(cause, ssl.SSLError):
            return ProviderError(
                f"TLS handshake with {where} failed ({cause.reason or cause})",
                hint="if the server speaks plain HTTP, use an http:// URL",
            )
        if isinstance(cause, ConnectionRefusedError):
            return TransientError(f"connection refused by {where}", hint=hint)
        if isinstance(cause, ImportError):
            return ProviderError(f"litellm failed internally: {cause}", hint="run with -v")
    names = {type(c).__name__ for c in chain}
    if names & {
        "APIConnectionError",
        "ConnectError",
        "ClientConnectorError",
        "ConnectionError",
    } or any(isinstance(c, (ConnectionError, TimeoutError)) for c in chain):
        detail = _short(str(chain[-1]), 160)
        return TransientError(f"cannot reach {where}: {detail}", hint=hint)
    if names & {"Timeout", "APITimeoutError", "ReadTimeout", "ServerTimeoutError"}:
        return TransientError(f"{where} timed out", hint="the server is slow or stalled")
    return None


def classify(exc: BaseException, plan: SpawnPlan) -> ProviderError:
    """Map any exception from a model call onto nexpy's hierarchy, with a line to act on."""
    if isinstance(exc, ProviderError):
        return exc
    where = plan.endpoint or plan.spec.route.prefix
    status = _status_of(exc)
    text = str(exc)
    lowered = text.lower()
    name = type(exc).__name__

    if (
        status == 413
        or any(m in lowered for m in _OVERFLOW_MARKERS)
        or name == ("ContextWindowExceededError")
    ):
        m = _N_CTX.search(text) or _MAX_CTX.search(text)
        return ContextOverflow(
            f"the request does not fit the model's context window at {where}",
            hint="lower --context-window, /compact, or start the server with a bigger -c",
            n_ctx=int(m.group(1)) if m else None,
        )
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        key = f"${plan.api_key_env}" if plan.api_key_env else "the endpoint's api_key_env"
        return AuthError(
            f"HTTP {status or 401} from {where}: the server refused the credentials",
            hint=f"check {key}",
            status=status,
        )
    if status == 404 or name == "NotFoundError":
        return NotFoundError(
            f"HTTP 404 from {where}: model {plan.model!r} not found ({_short(text, 120)})",
            hint=f"check -m, or list the server's models with: nex doctor -m {plan.spec}",
            status=404,
        )
    if (transport := _transport_failure(exc, where)) is not None:
        return transport
    if (
        status in (408, 429)
        or (status is not None and status >= 500)
        or name
        in (
            "RateLimitError",
            "InternalServerError",
            "ServiceUnavailableError",
            "BadGatewayError",
        )
    ):
        return TransientError(
            f"HTTP {status} from {where}: {_short(text)}",
            hint="the server is overloaded or failing; try again later",
            status=status,
            retry_after=_retry_after(exc),
        )
    if status == 400 or name in ("BadRequestError", "UnprocessableEntityError"):
        return BadRequestError(f"HTTP {status or 400} from {where}: {_short(text)}", status=status)
    return ProviderError(f"model call to {where} failed: {name}: {_short(text)}", status=status)


# -- streaming assembly ---------------------------------------------------------------------
class _ToolCallAssembler:
    """Joins streamed tool-call deltas; tolerant of a missing or always-zero index."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._by_index: dict[int, dict[str, Any]] = {}

    def add(self, delta: Any) -> None:
        index = _get(delta, "index")
        call_id = _get(delta, "id")
        fn = _get(delta, "function") or {}
        name = _get(fn, "name")
        args = _get(fn, "arguments") or ""
        current: dict[str, Any] | None = None
        if call_id and any(c["id"] == call_id for c in self.calls):
            current = next(c for c in self.calls if c["id"] == call_id)
        elif (
            isinstance(index, int)
            and index in self._by_index
            and not (
                call_id and self._by_index[index]["id"] and self._by_index[index]["id"] != call_id
            )
        ):
            current = self._by_index[index]
        elif not call_id and not name and self.calls:
            current = self.calls[-1]  # a continuation chunk without index or id
        if current is None:
            current = {
                "id": call_id or "",
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
            self.calls.append(current)
            if isinstance(index, int):
                self._by_index[index] = current
        if call_id and not current["id"]:
            current["id"] = call_id
        if name:
            current["function"]["name"] = name
        current["function"]["arguments"] += args

    def finish(self) -> list[dict[str, Any]]:
        for n, call in enumerate(self.calls):
            if not call["id"]:
                call["id"] = f"call_{n}"
        return [c for c in self.calls if c["function"]["name"]]


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


class _Dedup:
    """Forwards streamed text, never showing again what an earlier attempt already showed."""

    def __init__(self, sink: TextCallback) -> None:
        self.sink = sink
        self.shown = ""
        self.attempt_text = ""

    def new_attempt(self) -> None:
        self.attempt_text = ""

    def __call__(self, piece: str) -> None:
        self.attempt_text += piece
        # A retry that diverged from what was shown leaves the earlier text on screen; the
        # journal keeps only this attempt's text.
        if len(self.attempt_text) > len(self.shown) and self.attempt_text.startswith(self.shown):
            fresh = self.attempt_text[len(self.shown) :]
            self.shown = self.attempt_text
            self.sink(fresh)


# -- the litellm model ----------------------------------------------------------------------
Sleep = Callable[[float], Awaitable[None]]


class LitellmModel:
    """Streams a chat completion through `litellm.acompletion`, with retries and an idle timeout."""

    def __init__(
        self,
        plan: SpawnPlan,
        *,
        idle_timeout: float = 600.0,
        connect_timeout: float = 30.0,
        max_attempts: int = 4,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[ProviderError, int, float], None] | None = None,
    ) -> None:
        self.plan = plan
        self.name = str(plan.spec)
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.on_retry = on_retry

    def _kwargs(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.plan.litellm_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "timeout": self.idle_timeout,
            "num_retries": 0,
            "max_retries": 0,
            # With tools, litellm imports its MCP gateway (needs the `mcp` package, absent on a
            # base install) to check for MCP tools; nex never sends any, so skip the check.
            "_skip_mcp_handler": True,
        }
        if self.plan.endpoint:
            kwargs["api_base"] = self.plan.endpoint
        # The openai client insists on a key; local servers ignore this placeholder.
        kwargs["api_key"] = self.plan.api_key() or "sk-no-key-required"
        if self.plan.headers:
            kwargs["extra_headers"] = dict(self.plan.headers)
        if tools:
            kwargs["tools"] = tools
        return kwargs

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        dedup = _Dedup(on_text)
        attempt = 0
        while True:
            attempt += 1
            dedup.new_attempt()
            try:
                return await self._attempt(messages, tools, dedup, max_tokens)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = classify(exc, self.plan)
                if not error.retryable or attempt >= self.max_attempts:
                    if attempt > 1 and error.retryable:
                        error.message += f" (after {attempt} attempts)"
                    raise error from exc
                delay = _backoff(attempt, error.retry_after)
                if self.on_retry:
                    self.on_retry(error, attempt, delay)
                await self.sleep(delay)

    async def _attempt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        max_tokens: int | None,
    ) -> Reply:
        lm = litellm()
        kwargs = self._kwargs(messages, tools)
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        stream = await asyncio.wait_for(
            lm.acompletion(**kwargs), self.connect_timeout + self.idle_timeout
        )
        text: list[str] = []
        calls = _ToolCallAssembler()
        usage: dict[str, int] | None = None
        finish: str | None = None
        chunks = 0
        try:
            iterator = stream.__aiter__()
            while True:
                try:
                    chunk = await asyncio.wait_for(iterator.__anext__(), self.idle_timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise TransientError(
                        f"no data from {self.plan.endpoint} for {self.idle_timeout:.0f} s",
                        hint="the server stalled; raise the idle timeout for slow prefill",
                    ) from None
                chunks += 1
                if (u := _get(chunk, "usage")) is not None and _get(u, "prompt_tokens") is not None:
                    usage = {
                        "prompt_tokens": int(_get(u, "prompt_tokens") or 0),
                        "completion_tokens": int(_get(u, "completion_tokens") or 0),
                    }
                for choice in _get(chunk, "choices") or []:
                    delta = _get(choice, "delta")
                    if piece := _get(delta, "content"):
                        text.append(piece)
                        on_text(piece)
                    for tc in _get(delta, "tool_calls") or []:
                        calls.add(tc)
                    finish = _get(choice, "finish_reason") or finish
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        tool_calls = calls.finish()
        if chunks == 0 or (not text and not tool_calls and finish is None):
            raise TransientError(
                f"empty reply stream from {self.plan.endpoint}",
                hint="the server answered 200 with no data; check its log (chat template?)",
            )
        return Reply("".join(text), tool_calls, usage, finish)


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; a server's Retry-After wins (capped at 60 s)."""
    if retry_after is not None:
        return min(retry_after, 60.0)
    base = 0.5 * (2 ** (attempt - 1))
    return base * (0.5 + random.random())


def parse_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """Tool-call arguments as a dict; raises ValueError with a reason the model can act on."""
    if isinstance(raw, dict):
        return raw
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"arguments are not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    return value
