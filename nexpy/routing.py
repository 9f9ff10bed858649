"""The one provider → handler table (DESIGN §1) and the model-spec parser that reads it.

`handler_for_model()` is the single source of truth for which handler runs a model; nothing
else in nexpy decides it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from nexpy.errors import UsageError


@dataclass(frozen=True)
class Route:
    prefix: str
    handler: str  # "nex" | "claude" | "codex"
    litellm_prefix: str | None  # what litellm is told; None for CLI handlers and the stub
    default_endpoint: str | None
    key_env: str | None = None
    needs_endpoint: bool = False
    add_v1: bool = True  # a bare URL gets /v1 (not for Ollama's native API)


# litellm's own OpenAI-compatible client (its httpx handler, no openai SDK underneath): per request
# 2x cheaper than `openai/` on a loopback stub, and its cost stays near flat as a session grows
# (the SDK re-walks every message of the request on every call). bench/ measures both.
OPENAI_COMPATIBLE = "hosted_vllm/"

ROUTES: dict[str, Route] = {
    r.prefix: r
    for r in (
        Route("local", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8080/v1"),
        Route("llamacpp", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8080/v1"),
        Route("vllm", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8000/v1"),
        Route("ollama", "nex", "ollama_chat/", "http://127.0.0.1:11434", add_v1=False),
        Route(
            "openrouter",
            "nex",
            "openrouter/",
            "https://openrouter.ai/api/v1",
            key_env="OPENROUTER_API_KEY",
        ),
        Route("openai", "nex", "openai/", "https://api.openai.com/v1", key_env="OPENAI_API_KEY"),
        Route("oai-compat", "nex", OPENAI_COMPATIBLE, None, needs_endpoint=True),
        Route("stub", "nex", None, None),
        Route("claude", "claude", None, None),
        Route("codex", "codex", None, None),
    )
}

# What a spec without a known prefix means: a bare model name on the default local server.
DEFAULT_PREFIX = "local"


@dataclass(frozen=True)
class ModelSpec:
    route: Route
    name: str  # the model name as it goes on the wire: prefix stripped
    explicit_prefix: bool

    @property
    def handler(self) -> str:
        return self.route.handler

    def __str__(self) -> str:
        return f"{self.route.prefix}:{self.name}"


def _near_prefix(candidate: str) -> str | None:
    """A known prefix one or two edits from `candidate` (a typo), else None."""
    for known in ROUTES:
        if _edit_distance(candidate.lower(), known) <= 2 and candidate.lower() != known:
            return known
    close = difflib.get_close_matches(candidate.lower(), list(ROUTES), n=1, cutoff=0.8)
    return close[0] if close else None


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): `lcoal` is one swap from `local`."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def parse_model(spec: str) -> ModelSpec:
    """Split `prefix:name` using only the routing table; `qwen3:32b` is a bare model name."""
    spec = spec.strip()
    if not spec:
        raise UsageError("empty model name", hint="pass -m PROVIDER:MODEL, e.g. -m local:qwen3")
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in ROUTES:
        if not rest and head.lower() not in ("claude", "codex"):
            raise UsageError(
                f"model spec {spec!r} names a provider but no model",
                hint=f"write -m {head}:MODEL",
            )
        return ModelSpec(ROUTES[head.lower()], rest, explicit_prefix=True)
    if sep and (near := _near_prefix(head)) is not None:
        raise UsageError(
            f"unknown provider prefix {head!r} in model {spec!r}",
            hint=f"did you mean {near!r}? known prefixes: {', '.join(ROUTES)}",
        )
    return ModelSpec(ROUTES[DEFAULT_PREFIX], spec, explicit_prefix=False)


def handler_for_model(spec: str) -> str:
    """Which handler runs this model: "nex", "claude" or "codex"."""
    return parse_model(spec).handler


# -x/--executor is a deprecated alias kept for old scripts; it only ever selects a prefix.
EXECUTOR_PREFIX = {
    "nex": "local",
    "native": "local",
    "local": "local",
    "claude": "claude",
    "codex": "codex",
}


def default_endpoint(route: Route) -> str | None:
    if route.prefix == "ollama" and os.environ.get("OLLAMA_HOST"):
        host = os.environ["OLLAMA_HOST"]
        return host if "://" in host else f"http://{host}"
    return route.default_endpoint
