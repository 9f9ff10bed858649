"""The model call: one `Model` protocol, one litellm-backed implementation.

litellm is heavy (≈2.8 s, ≈2,600 modules) and chatty, so this module never imports it at import
time. `start_background_import()` starts a thread at launch that loads it as soon as the main
thread goes idle; `litellm()` waits for it. Environment hygiene (DESIGN §8) happens exactly
once, before the import.

A request streams, with an idle timeout ($NEX_IDLE_TIMEOUT, default 600 s) between chunks and
before the first. `classify()` turns whatever litellm raised into one of nexpy's errors by the
cause at the bottom of its chain, with the server's own words; transient ones are retried (at
most four attempts, jittered backoff, a 429's Retry-After honoured) and text an earlier attempt
already showed is not shown again. A 200 stream with no answer in it is retried once unstreamed,
which turns llama-cpp-python's silent template and context errors into their real messages.
Tool calls a model wrote as text are recovered here (nexpy.toolcalls), only for offered tools.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from nexpy.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ContextOverflow,
    NotFoundError,
    ProviderError,
    TransientError,
)
from nexpy.plan import SpawnPlan
from nexpy.routing import OPENAI_COMPATIBLE
from nexpy.toolcalls import TextCallExtractor, ToolCallAssembler, field_of, tool_parameters

TextCallback = Callable[[str], None]


@dataclass
class Reply:
    """One complete model answer."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    calls_from_text: bool = False  # the calls were written as text and recovered by nex


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
_wanted = threading.Event()  # someone is waiting for litellm: import it now

# Importing litellm is ~2.8 s of pure-Python work. In a thread it takes turns at the GIL with the
# main thread, so started at once it roughly doubles the time to draw the REPL prompt. It starts
# instead when the main thread first sleeps (waiting for input, or for litellm itself), or when
# someone asks for it, or after a cap.
_IDLE_POLL = 0.01  # seconds between looks at the main thread
_IDLE_LOOKS = 3  # consecutive looks at a sleeping main thread that count as idle
_IDLE_CAP = 2.0  # seconds after which the import starts regardless


def prepare_environment() -> None:
    """Set what must be set before litellm (or tiktoken) is imported. Idempotent."""
    # Never fetch the cost map (5 s on a hanging network), never load a .env from the cwd.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    # litellm scans every message of every request for base64 to shorten in its logs; nex keeps
    # no litellm logs, and the scan is the largest cost of a request late in a long session.
    os.environ.setdefault("MAX_BASE64_LENGTH_FOR_LOGGING", "0")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # tiktoken downloads its encodings; litellm ships cl100k/o200k/p50k: use those offline.
        spec = importlib.util.find_spec("litellm")
        if spec and spec.submodule_search_locations:
            bundled = Path(next(iter(spec.submodule_search_locations)))
            tokenizers = bundled / "litellm_core_utils" / "tokenizers"
            if tokenizers.is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizers)


def _main_thread_sleeping() -> bool | None:
    """Whether the main thread is asleep (state S); None where the OS cannot tell (not Linux)."""
    tid = threading.main_thread().native_id
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            # The command name in parentheses may hold spaces; the state follows the last ")".
            return f.read().rsplit(b")", 1)[1].split()[0] == b"S"
    except (OSError, IndexError):
        return None


def _wait_for_idle_main() -> None:
    deadline = time.monotonic() + _IDLE_CAP
    looks = 0
    while looks < _IDLE_LOOKS and time.monotonic() < deadline:
        if _wanted.wait(_IDLE_POLL):
            return
        sleeping = _main_thread_sleeping()
        if sleeping is None:
            return
        looks = looks + 1 if sleeping else 0


def _import() -> None:
    global _module, _import_error
    try:
        _wait_for_idle_main()
        prepare_environment()
        import litellm as lm

        lm.suppress_debug_info = True  # it prints banners to stdout otherwise
        lm.disable_hf_tokenizer_download = True  # token_counter stalls 23 s offline
        lm.telemetry = False
        lm.drop_params = True  # local servers reject params they do not know
        lm.disable_streaming_logging = True  # per-chunk logging work for callbacks nex never sets
        import logging

        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
        _module = lm
    except BaseException as e:  # surfaced to the caller of litellm()
        _import_error = e


def start_background_import() -> None:
    """Begin importing litellm in a daemon thread, as soon as the main thread goes idle, so no
    prompt ever waits for it."""
    global _thread
    with _lock:
        if _thread is None and _module is None:
            _thread = threading.Thread(target=_import, name="litellm-import", daemon=True)
            _thread.start()


def litellm() -> ModuleType:
    """The litellm module, waiting for the background import if it is still running."""
    start_background_import()
    assert _thread is not None
    _wanted.set()
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
_TEMPLATE_MARKERS = (
    "roles must alternate",
    "chat template",
    "chat_template",
    "jinja",
    "raise_exception",
    "templateerror",
)
_HTML_TITLE = re.compile(r"<(?:title|h1)[^>]*>(.*?)</(?:title|h1)>", re.IGNORECASE | re.DOTALL)
# litellm stacks its class names in front of the server's words: "litellm.InternalServerError:
# InternalServerError: OpenAIException - stub fault". Strip them one by one.
_LITELLM_PREFIX = re.compile(r"^(?:litellm\.)?\w*(?:Error|Exception)(?::| -)\s*")
_STALL_NAMES = frozenset(
    {"Timeout", "APITimeoutError", "ReadTimeout", "ServerTimeoutError", "SocketTimeoutError"}
)
_CUT_NAMES = frozenset(
    {
        "ClientPayloadError",
        "TransferEncodingError",
        "ContentLengthError",
        "ServerDisconnectedError",
        "RemoteProtocolError",
        "ReadError",
        "IncompleteRead",
    }
)
_CONNECT_NAMES = frozenset(
    {"APIConnectionError", "ConnectError", "ClientConnectorError", "ClientOSError"}
)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(chain: list[BaseException]) -> float | None:
    for exc in chain:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: rare from model servers; fall back to backoff
    return None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strip_prefixes(text: str) -> str:
    text = text.strip()
    while (m := _LITELLM_PREFIX.match(text)) is not None and m.end() > 0:
        text = text[m.end() :]
    return text


def _json_message(data: Any) -> str | None:
    """The message of an error body: OpenAI's {"error": {"message"}}, Ollama's {"error": "…"},
    FastAPI's {"detail": …}, or a bare {"message"}."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    for key in ("message", "detail"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return None


def server_words(text: str) -> str:
    """What a server said in an error body, as one short line a person can read."""
    text = _strip_prefixes(text)
    brace = text.find("{")
    if brace >= 0:
        try:
            message = _json_message(json.loads(text[brace:]))
        except ValueError:
            message = None
        if message:
            return _short(message)
    lowered = text.lower()
    if "<html" in lowered or "<!doctype html" in lowered:
        m = _HTML_TITLE.search(text)
        title = " ".join(m.group(1).split()) if m else ""
        return f"an HTML page{f' ({title!r})' if title else ''}, likely from a proxy"
    return _short(text) or "no details"


def _body_of(chain: list[BaseException]) -> str | None:
    """The text of the HTTP error response somewhere in the chain, if one was read."""
    for exc in chain:
        response = getattr(exc, "response", None)
        if response is None or getattr(response, "status_code", 0) < 400:
            continue
        try:
            text = response.text
        except Exception:  # a streamed response whose body was never read
            continue
        if isinstance(text, str) and text.strip():
            return text
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (litellm wraps three or four deep)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        original = getattr(current, "original_exception", None)
        current = (
            current.__cause__
            or (original if isinstance(original, BaseException) else None)
            or current.__context__
        )
    return seen


# litellm's Ollama stream parser meets Ollama's mid-stream {"error": "..."} line as a KeyError
# and reports the line as a Python dict repr.
_OLLAMA_STREAM_ERROR = re.compile(r"unexpected response from Ollama: (\{.*\})", re.DOTALL)


def _ollama_words(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _short(text)
    return _short(_json_message(value) or text)


def stalled(where: str, seconds: float | None, *, mid_answer: bool) -> TransientError:
    """The server stopped sending for the idle timeout (`seconds`, when the caller knows it)."""
    what = "stopped sending mid-answer" if mid_answer else "sent no reply"
    return TransientError(
        f"{where} {what}" + (f" for {seconds:g} s" if seconds is not None else " in time"),
        hint="the server stalled; for slow prompt processing raise NEX_IDLE_TIMEOUT",
    )


def _transport_failure(
    chain: list[BaseException], where: str, idle_timeout: float | None
) -> ProviderError | None:
    """A failure of the connection or the stream itself, named by its real cause, or None.

    litellm reports a refused connection as "InternalServerError 500: Connection error." and a
    cut stream as a 503; the truth is at the bottom of the exception chain.
    """
    import socket
    import ssl

    names = {type(c).__name__ for c in chain}
    mid_answer = "MidStreamFallbackError" in names
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
        if isinstance(cause, json.JSONDecodeError):
            return TransientError(
                f"{where} sent a malformed stream chunk ({cause.msg})",
                hint="a proxy or the server garbled the stream; check the server's log",
            )
        if isinstance(cause, ImportError):
            return ProviderError(f"litellm failed internally: {cause}", hint="run with -v")
    if names & _STALL_NAMES or any(isinstance(c, TimeoutError) for c in chain):
        return stalled(where, idle_timeout, mid_answer=mid_answer)
    if names & _CUT_NAMES or any(isinstance(c, ConnectionResetError) for c in chain):
        when = "mid-answer" if mid_answer else "before answering"
        return TransientError(
            f"the connection to {where} was cut {when}",
            hint="the server or a proxy closed it; check the server's log",
        )
    # litellm wraps every failure after the first chunk in an APIConnectionError, so mid-answer
    # that name says nothing about the connection.
    connect = names & _CONNECT_NAMES - ({"APIConnectionError"} if mid_answer else set())
    if connect or any(isinstance(c, ConnectionError) for c in chain):
        return TransientError(f"cannot reach {where}: {_short(str(chain[-1]), 160)}", hint=hint)
    ollama = _OLLAMA_STREAM_ERROR.search(str(chain[0]))
    if ollama is not None:
        return TransientError(
            f"{where} reported an error mid-answer: {_ollama_words(ollama.group(1))}",
            hint="check the server's log",
        )
    if mid_answer:
        return TransientError(
            f"{where} reported an error mid-answer: {server_words(str(chain[-1]))}",
            hint="check the server's log",
        )
    return None


def classify(
    exc: BaseException, plan: SpawnPlan, *, idle_timeout: float | None = None
) -> ProviderError:
    """Map any exception from a model call onto nexpy's hierarchy, with a line to act on."""
    if isinstance(exc, ProviderError):
        return exc
    where = plan.endpoint or plan.spec.route.prefix
    chain = _chain(exc)
    status = _status_of(exc)
    body = _body_of(chain)
    text = " ".join([*(str(c) for c in chain), body or ""])
    lowered = text.lower()
    name = type(exc).__name__

    if (
        status == 413
        or any(m in lowered for m in _OVERFLOW_MARKERS)
        or name == "ContextWindowExceededError"
    ):
        m = _N_CTX.search(text) or _MAX_CTX.search(text)
        return ContextOverflow(
            f"the request does not fit the model's context window at {where}",
            hint="lower --context-window, /compact, or start the server with a bigger -c",
            n_ctx=int(m.group(1)) if m else None,
        )
    if (transport := _transport_failure(chain, where, idle_timeout)) is not None:
        return transport
    said = server_words(body or str(exc))
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        key = f"${plan.api_key_env}" if plan.api_key_env else "the endpoint's api_key_env"
        return AuthError(
            f"HTTP {status or 401} from {where}: the server refused the credentials ({said})",
            hint=f"check {key}",
            status=status,
        )
    if status == 404 or name == "NotFoundError":
        return NotFoundError(
            f"HTTP 404 from {where}: model {plan.model!r} not found ({said})",
            hint=f"check -m and the path of -e, or list the models with: nex doctor -m {plan.spec}",
            status=404,
        )
    if status in (400, 422, 500) and any(m in lowered for m in _TEMPLATE_MARKERS):
        # llama.cpp servers answer a chat-template exception with a 500; retrying the same
        # conversation cannot help.
        return BadRequestError(
            f"HTTP {status} from {where}: the chat template rejected the conversation ({said})",
            hint="the model's template cannot render it (tool messages?); use a tool-capable "
            "template: llama.cpp --jinja or --chat-template-file",
            status=status,
        )
    if status in (408, 429) or (status is not None and status >= 500):
        hint = (
            "the server is rate limiting; wait and try again"
            if status == 429
            else "the server is failing or overloaded; check its log or try again later"
        )
        return TransientError(
            f"HTTP {status} from {where}: {said}",
            hint=hint,
            status=status,
            retry_after=_retry_after(chain),
        )
    if status == 400 or name in ("BadRequestError", "UnprocessableEntityError"):
        return BadRequestError(
            f"HTTP {status or 400} from {where}: {said}",
            hint="the server rejected the request; run: nex doctor -m " + str(plan.spec),
            status=status,
        )
    return ProviderError(f"model call to {where} failed: {name}: {said}", status=status)


class _EmptyReply(TransientError):
    """A 200 stream that carried no answer: retried once without streaming, which makes
    llama-cpp-python show the real error (a chat-template failure streams as nothing)."""


# -- reading a reply ------------------------------------------------------------------------
class _Dedup:
    """Forwards streamed text, never showing again what an earlier attempt already showed.

    A retry that repeats the shown text stays silent until it passes it. One that diverges
    (a sampling model rarely repeats itself) cannot unshow the old text, so it says so once
    and shows its own answer from the start; the journal keeps only the last attempt's text.
    Each piece costs its own length, not the answer's: a long stream stays linear.
    """

    RESTART = "\n[nex: the retried answer differs; it starts again here]\n"

    def __init__(self, sink: TextCallback) -> None:
        self.sink = sink
        self.shown: list[str] = []  # what the user has seen, in pieces
        self.shown_len = 0
        self.attempt: list[str] = []  # this attempt's text, in pieces
        self.attempt_len = 0

    def new_attempt(self) -> None:
        self.attempt, self.attempt_len = [], 0

    def __call__(self, piece: str) -> None:
        if not piece:
            return
        start = self.attempt_len
        self.attempt.append(piece)
        self.attempt_len += len(piece)
        if start >= self.shown_len:  # past what was shown: the common case, every first attempt
            self._show(piece)
            return
        shown = "".join(self.shown)
        self.shown = [shown]
        overlap = shown[start : start + len(piece)]
        if piece.startswith(overlap):  # still repeating what was shown
            self._show(piece[len(overlap) :])
        else:
            text = "".join(self.attempt)
            self.shown, self.shown_len = [text], len(text)
            self.sink(self.RESTART + text)

    def _show(self, fresh: str) -> None:
        if fresh:
            self.shown.append(fresh)
            self.shown_len += len(fresh)
            self.sink(fresh)


class _ReplyReader:
    """Accumulates one reply from stream chunks (or one non-streamed response)."""

    def __init__(self, tools: list[dict[str, Any]] | None, on_text: TextCallback) -> None:
        self.on_text = on_text
        self.native = ToolCallAssembler()
        # Calls written as text are only recovered when tools were offered, and only by name.
        self.text_calls = TextCallExtractor(tool_parameters(tools)) if tools else None
        self.raw: list[str] = []
        self.usage: dict[str, int] | None = None
        self.finish: str | None = None
        self.spoke = False  # the server sent a delta or usage of its own

    def add(self, chunk: Any) -> None:
        u = field_of(chunk, "usage")
        if u is not None and field_of(u, "prompt_tokens") is not None:
            self.spoke = True
            self.usage = {
                "prompt_tokens": int(field_of(u, "prompt_tokens") or 0),
                "completion_tokens": int(field_of(u, "completion_tokens") or 0),
            }
        for choice in field_of(chunk, "choices") or []:
            delta = field_of(choice, "delta") or field_of(choice, "message")
            piece = field_of(delta, "content")
            calls = field_of(delta, "tool_calls") or []
            if piece is not None or calls or field_of(delta, "role"):
                self.spoke = True
            if piece:
                self.raw.append(piece)
                self.on_text(self.text_calls.feed(piece) if self.text_calls else piece)
            for call in calls:
                self.native.add(call)
            self.finish = field_of(choice, "finish_reason") or self.finish

    def reply(self, where: str, content_type: str) -> Reply:
        if not self.spoke:
            raise _empty(where, content_type)
        content = "".join(self.raw)
        calls = self.native.finish()
        from_text = False
        if self.text_calls is not None:
            self.on_text(self.text_calls.finish())
            content = self.text_calls.visible
            if not calls and self.text_calls.calls:
                calls, from_text = self.text_calls.calls, True
                content = content.strip()
        return Reply(content, calls, self.usage, self.finish, calls_from_text=from_text)


def _empty(where: str, content_type: str) -> ProviderError:
    """The error for a 200 reply without an answer, by what the server said it sent."""
    ctype = content_type.split(";")[0].strip().lower()
    if "html" in ctype:
        return ProviderError(
            f"{where} answered with an HTML page, not a chat stream",
            hint="check that -e is the model server's API URL (…/v1), not a web UI or proxy",
        )
    if ctype and ctype not in ("text/event-stream", "application/x-ndjson"):
        return ProviderError(
            f"{where} answered 200 with a body that is not a chat completion stream "
            f"(Content-Type: {ctype})",
            hint="check that -e is an OpenAI-compatible chat API URL (…/v1)",
        )
    return _EmptyReply(
        f"empty reply from {where}",
        hint="the server answered 200 with no data; check its log (a chat-template error?)",
    )


# -- the litellm model ----------------------------------------------------------------------
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
        idle_timeout: float | None = None,
        connect_timeout: float = 30.0,
        max_attempts: int = 4,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[ProviderError, int, float], None] | None = None,
    ) -> None:
        self.plan = plan
        self.name = str(plan.spec)
        self.where = plan.endpoint or plan.spec.route.prefix
        self.idle_timeout = idle_timeout if idle_timeout is not None else idle_timeout_from_env()
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.on_retry = on_retry

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
        if self.plan.spec.route.prefix == "ollama":
            from nexpy.budget import DEFAULT_WINDOW

            # Ollama's own default window is 2–4 K tokens, and it silently drops the start of a
            # longer prompt: ask for the window nex budgets against.
            kwargs["num_ctx"] = self.plan.context_window or DEFAULT_WINDOW
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
                if not error.retryable or attempt >= self.max_attempts:
                    if attempt > 1 and error.retryable:
                        error.message += f" (after {attempt} attempts)"
                    raise error from exc
                # After an empty stream, stay unstreamed: the server streams nothing here.
                stream = stream and not isinstance(error, _EmptyReply)
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
        *,
        stream: bool,
    ) -> Reply:
        # Never block the loop (Ctrl-C) on the import; once loaded, no thread hop per request.
        lm = _module if _module is not None else await asyncio.to_thread(litellm)
        kwargs = self.request_kwargs(messages, tools, stream=stream, max_tokens=max_tokens)
        if kwargs["model"].startswith(OPENAI_COMPATIBLE):
            kwargs["client"] = _coalescing_client(self.plan.endpoint)
        try:
            response = await asyncio.wait_for(
                lm.acompletion(**kwargs), self.connect_timeout + self.idle_timeout
            )
        except TimeoutError:
            raise stalled(self.where, self.idle_timeout, mid_answer=False) from None
        reader = _ReplyReader(tools, on_text)
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
            raise stalled(self.where, self.idle_timeout, mid_answer=reader.spoke) from None
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        headers = getattr(response, "_response_headers", None) or {}
        return reader.reply(self.where, str(headers.get("content-type", "")))


_Key = tuple[asyncio.AbstractEventLoop, str | None]
_clients: dict[_Key, Any] = {}


@functools.lru_cache(maxsize=64)
def _proxy_for(endpoint: str | None) -> str | None:
    """The environment's proxy for `endpoint` (read once: 0.5 ms a look, every request)."""
    import httpx

    url = httpx.URL(endpoint or "http://127.0.0.1")
    if urllib.request.proxy_bypass(url.host):
        return None
    return urllib.request.getproxies().get(url.scheme)


def _coalescing_client(endpoint: str | None) -> Any:
    """litellm's HTTP handler for the OpenAI-compatible routes, one per event loop (a pool that
    lasts the session), over a transport that merges text deltas which arrived together and
    rejects garbled events (nexpy.coalesce). The environment's proxy for `endpoint`, if any, is
    used as litellm's own client would."""
    proxy = _proxy_for(endpoint)
    loop = asyncio.get_running_loop()
    for key in [k for k in _clients if k[0].is_closed()]:
        del _clients[key]  # a finished loop's pool is of no use to anyone
    client = _clients.get((loop, proxy))
    if client is None:
        import httpx
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

        from nexpy.coalesce import CoalescingTransport

        transport = CoalescingTransport(httpx.AsyncHTTPTransport(retries=0, proxy=proxy))
        client = _clients[(loop, proxy)] = AsyncHTTPHandler(transport=transport)
    return client


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Jittered exponential backoff; a server's Retry-After wins (capped at 60 s)."""
    if retry_after is not None:
        return min(retry_after, 60.0)
    base = 0.5 * (2 ** (attempt - 1))
    return base * (0.5 + random.random())
