"""One error hierarchy, classified by what the caller does next.

Every error renders as one line a person can act on: what failed, where, and what to try.
The exit code travels with the error so the CLI never decides it twice.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_LIMIT = 3
EXIT_INTERRUPTED = 130


def one_line(text: str, width: int = 200) -> str:
    """`text` on one line (whitespace runs become one space), cut to `width` with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class NexError(Exception):
    """Base: a failure that ends in one line and an exit code."""

    exit_code = EXIT_RUNTIME
    kind = "error"
    retryable = False

    @property
    def exit_reason(self) -> str:
        """What `session.ended` says ended the run; the kind, unless a subclass knows better."""
        return self.kind

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line shown to a person."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


# -- fix the command line or the config (exit 2) ------------------------------------------
class UsageError(NexError):
    exit_code = EXIT_USAGE
    kind = "usage"


class ConfigError(NexError):
    exit_code = EXIT_USAGE
    kind = "config"


class SessionLocked(NexError):
    """Another process writes this session: pick another, or wait for it."""

    exit_code = EXIT_USAGE
    kind = "session_locked"


# -- the endpoint or handler failed (exit 1) ----------------------------------------------
class ProviderError(NexError):
    """A model call failed. `retryable` says whether trying the same request again may help."""

    kind = "provider"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.retry_after = retry_after


class TransientError(ProviderError):
    """Connection refused/reset, 408, 429, 5xx, an empty or idle stream: retry with backoff."""

    kind = "transient"
    retryable = True


class UnparsedOutput(TransientError):
    """The server's own tool-call/reasoning parser could not parse what the model wrote
    (llama.cpp's HTTP 500). Retried; then the answer is asked for as raw text (nexpy.rawtext)."""

    kind = "unparsed_output"


class AuthError(ProviderError):
    kind = "auth"


class NotFoundError(ProviderError):
    kind = "not_found"


class BadRequestError(ProviderError):
    """The server refused this request as it is. `refusal` is the server's whole message (the
    line shown is cut short; llama.cpp wraps a template's own words deep in a long one), which
    is what nexpy.adapt reads to learn a reshaping."""

    kind = "bad_request"

    def __init__(self, message: str, *, refusal: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.refusal = refusal or message


class ContextOverflow(ProviderError):
    """The request did not fit the model's window: compact and retry, or stop with exit 3."""

    kind = "context_overflow"
    exit_code = EXIT_LIMIT
    exit_reason = "context_limit"

    def __init__(self, message: str, *, hint: str = "", n_ctx: int | None = None) -> None:
        super().__init__(message, hint=hint, status=400)
        self.n_ctx = n_ctx


class HandlerError(NexError):
    """A wrapped CLI (claude, codex) failed."""

    kind = "handler"


# -- the run is over, by a limit or by the user --------------------------------------------
class LimitReached(NexError):
    exit_code = EXIT_LIMIT
    kind = "limit"

    def __init__(self, message: str, *, reason: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.reason = reason  # max_turns | max_time | context_limit

    @property
    def exit_reason(self) -> str:
        return self.reason
