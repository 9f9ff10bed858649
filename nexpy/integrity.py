"""When an answer is complete: the one rule, for every route and both framings of a body.

A streamed answer is complete only if the server itself ended it: a `finish_reason` in an
OpenAI-style stream, `"done": true` in Ollama's NDJSON. An end of the stream before that — a
clean close (FIN) of a `Connection: close` body, a reset, an incomplete chunked body alike — is
a cut, retried like any cut stream (the text already shown is not shown again). litellm cannot
be asked after the fact: at the end of any stream it appends a finish of its own ("stop"), so
the answer looks finished; what the *server* sent is what its stream wrapper recorded
(`received_finish_reason`, or a finish on a content chunk, `intermittent_finish_reason`).

A whole (unstreamed) body must parse and be finished by its own format's mark: a finish reason on
every choice of an OpenAI chat completion, `"done": true` in Ollama's native reply (no choices:
the OpenAI rule does not apply to it). litellm would fill a missing one with "stop", so bodies
are checked on the wire, in nex's transport (nexpy.coalesce), before litellm reads them.

`finish_reason: "length"` is not a cut: the server ended the answer at `max_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

from nexpy.errors import TransientError

CUT_HINT = "the server or a proxy closed it before the answer's end; check the server's log"


def cut(where: str) -> TransientError:
    """The error for an answer that stopped before the server ended it."""
    return TransientError(f"the connection to {where} was cut mid-answer", hint=CUT_HINT)


def server_finished(stream: Any) -> bool:
    """Whether the server itself ended a litellm stream (a finish reason, Ollama's done)."""
    return bool(
        getattr(stream, "received_finish_reason", None)
        or getattr(stream, "intermittent_finish_reason", None)
    )


def check_stream(stream: Any, where: str) -> None:
    """Raise `cut` unless the server ended the stream that was just read to its end."""
    if not server_finished(stream):
        raise cut(where)


class BodyCut(Exception):
    """An unstreamed chat completion that stopped short (raised by the transport, so that
    litellm's wrapping keeps it at the bottom of the chain for classification)."""


def check_body(data: bytes) -> None:
    """Raise BodyCut for a JSON body cut short (it starts as JSON and does not parse), a chat
    completion with a choice that has no finish reason, or an Ollama reply not `done`. Anything
    else (an error object, a body that is not JSON at all) is left for the caller to classify."""
    if not data.lstrip().startswith(b"{"):
        return
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if body is None:  # raised outside the except: the parse error must not be its context
        raise BodyCut("the reply's JSON body ended before its end")
    if not isinstance(body, dict) or "error" in body:
        return
    if "choices" not in body and "message" in body:  # Ollama's /api/chat
        if body.get("done") is not True:
            raise BodyCut("the reply is not done: the server stopped before the answer's end")
        return
    choices = body.get("choices")
    if not isinstance(choices, list):
        return
    if any(not (isinstance(c, dict) and c.get("finish_reason")) for c in choices):
        raise BodyCut("the reply has no finish reason: the server stopped before the answer's end")
