"""Error classification: whatever a model call raised, as one of nexpy's errors, in one line.

Pure: it reads exception chains, status codes and error bodies, and needs no litellm. The truth
is at the bottom of litellm's chain (it reports a refused connection as "InternalServerError 500:
Connection error." and a cut stream as a 503), and the server's own words are kept.
"""

from __future__ import annotations

import ast
import json
import re
from typing import TYPE_CHECKING, Any

from nexpy.errors import (
    AuthError,
    BadRequestError,
    ContextOverflow,
    NotFoundError,
    ProviderError,
    TransientError,
    UnparsedOutput,
    one_line,
)
from nexpy.integrity import BodyCut, cut

if TYPE_CHECKING:
    from nexpy.plan import SpawnPlan

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
# llama.cpp's per-family output parser, failing on what the model wrote (HTTP 500, or an error
# event in a 200 stream): "The model produced output that does not match the expected
# peg-native format", "Failed to parse input at pos 12".
_UNPARSED = re.compile(
    r"(?:the model produced output that )?does not match the expected [\w .-]*?format"
    r"|failed to parse input at pos \d+",
    re.IGNORECASE,
)


def unparsed_output(text: str) -> bool:
    """Whether a server's error says its output parser failed on what the model wrote (the
    request itself rendered)."""
    return _UNPARSED.search(text) is not None


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


def server_words(text: str, width: int = 200) -> str:
    """What a server words in an error body, as one line a person can read (cut to `width`)."""
    text = _strip_prefixes(text)
    brace = text.find("{")
    if brace >= 0:
        try:
            message = _json_message(json.loads(text[brace:]))
        except ValueError:
            message = None
        if message:
            return one_line(message, width)
    lowered = text.lower()
    if "<html" in lowered or "<!doctype html" in lowered:
        m = _HTML_TITLE.search(text)
        title = " ".join(m.group(1).split()) if m else ""
        return f"an HTML page{f' ({title!r})' if title else ''}, likely from a proxy"
    return one_line(text, width) or "no details"


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
        return one_line(text)
    return one_line(_json_message(value) or text)


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
        if isinstance(cause, BodyCut):
            return cut(where)
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
        return TransientError(f"cannot reach {where}: {one_line(str(chain[-1]), 160)}", hint=hint)
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
    words = server_words(body or str(exc))
    if (unparsed := _UNPARSED.search(text)) is not None:
        return UnparsedOutput(
            f"{where} could not parse the model's output ({unparsed.group()})",
            hint="the server's tool-call parser does not fit what this model writes",
            status=status,
        )
    if (transport := _transport_failure(chain, where, idle_timeout)) is not None:
        return transport
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        key = f"${plan.api_key_env}" if plan.api_key_env else "the endpoint's api_key_env"
        return AuthError(
            f"HTTP {status or 401} from {where}: the server refused the credentials ({words})",
            hint=f"check {key}",
            status=status,
        )
    if status == 404 or name == "NotFoundError":
        return NotFoundError(
            f"HTTP 404 from {where}: model {plan.model!r} not found ({words})",
            hint=f"check -m and the path of -e, or list the models with: nex doctor -m {plan.spec}",
            status=404,
        )
    if status in (400, 422, 500) and any(m in lowered for m in _TEMPLATE_MARKERS):
        # llama.cpp servers answer a chat-template exception with a 500; retrying the same
        # conversation cannot help.
        return BadRequestError(
            f"HTTP {status} from {where}: the chat template rejected the conversation ({words})",
            refusal=server_words(body or str(exc), width=4000),
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
            f"HTTP {status} from {where}: {words}",
            hint=hint,
            status=status,
            retry_after=_retry_after(chain),
        )
    if status == 400 or name in ("BadRequestError", "UnprocessableEntityError"):
        return BadRequestError(
            f"HTTP {status or 400} from {where}: {words}",
            refusal=server_words(body or str(exc), width=4000),
            hint="the server rejected the request; run: nex doctor -m " + str(plan.spec),
            status=status,
        )
    return ProviderError(f"model call to {where} failed: {name}: {words}", status=status)
