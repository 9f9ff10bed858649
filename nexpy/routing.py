"""The one provider → handler table (DESIGN §1) and the model-spec parser that reads it.

Everything that differs between routes is a field of its `Route`: which handler runs it (and
the module that builds that handler), what litellm is told, the default endpoint, the key, the
native API it speaks, the headers it sends. Code elsewhere reads these fields; it never branches
on a prefix. `nexpy.plan.plan_spawn` is what picks the route of a run (a configured endpoint's
`provider` can give a bare model name its prefix), and so the handler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nexpy.errors import UsageError

# handler -> "module:factory" building it. Imported lazily, so claude:/codex: never load litellm.
HANDLERS = {
    "nex": "nexpy.agent:create",
    "claude": "handlers.claude:create",
    "codex": "handlers.codex:create",
}

# litellm's own OpenAI-compatible client (its httpx handler, no openai SDK underneath): per request
# 2x cheaper than `openai/` on a loopback stub, and its cost stays near flat as a session grows
# (the SDK re-walks every message of the request on every call). bench/ measures both.
OPENAI_COMPATIBLE = "hosted_vllm/"
LLAMA_CPP = (("cache_prompt", True),)


@dataclass(frozen=True)
class Route:
    prefix: str
    handler: str  # a key of HANDLERS
    litellm_prefix: str | None  # what litellm is told; None for CLI handlers and the stub
    default_endpoint: str | None
    key_env: str | None = None
    needs_endpoint: bool = False
    add_v1: bool = True  # a bare URL gets /v1 (not for Ollama's native API)
    embedded: bool = False  # the model runs inside nex: no server, no litellm
    native_api: str | None = None  # "ollama": /api/chat, /api/show; None: OpenAI-style /v1
    endpoint_env: str | None = None  # a variable naming the server, beating default_endpoint
    window_param: str | None = None  # the request field that sets the server's window
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request, unless configured
    model_optional: bool = False  # the CLI picks its own default model
    # Request-body fields this server reads (a configured extra_body beats them). Only where the
    # server is known: OpenAI refuses unknown fields.
    body: tuple[tuple[str, Any], ...] = ()

    @property
    def factory(self) -> str:
        """ "module:factory" of the handler that runs this route."""
        return HANDLERS[self.handler]

    @property
    def uses_litellm(self) -> bool:
        return self.litellm_prefix is not None

    @property
    def coalesces(self) -> bool:
        """Whether nex's own transport (nexpy.coalesce) goes under litellm's client here: the
        local servers' routes (OpenAI-compatible, and Ollama's native API, whose NDJSON it
        passes through), where it checks whole bodies and resends on a dead connection."""
        return self.litellm_prefix in (OPENAI_COMPATIBLE, "ollama_chat/")


ROUTES: dict[str, Route] = {
    r.prefix: r
    for r in (
        # llama.cpp: keep the prompt's KV cache for the next request, which extends it (issue
        # 12). Recent servers default to it; older ones and llama-cpp-python's do not.
        Route("local", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8080/v1", body=LLAMA_CPP),
        Route("llamacpp", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8080/v1", body=LLAMA_CPP),
        Route("vllm", "nex", OPENAI_COMPATIBLE, "http://127.0.0.1:8000/v1"),
        Route(
            "ollama",
            "nex",
            "ollama_chat/",
            "http://127.0.0.1:11434",
            add_v1=False,
            native_api="ollama",
            endpoint_env="OLLAMA_HOST",
            # Ollama's own default window is 2–4 K tokens, and it silently drops the start of a
            # longer prompt: nex asks for the window it budgets against.
            window_param="num_ctx",
            # Ollama unloads a model (and its prompt cache) after 5 idle minutes by default;
            # a person reading an answer or a long tool run easily takes that long.
            body=(("keep_alive", "30m"),),
        ),
        Route(
            "openrouter",
            "nex",
            "openrouter/",
            "https://openrouter.ai/api/v1",
            key_env="OPENROUTER_API_KEY",
            headers=(("HTTP-Referer", "https://github.com/nexpy/nexpy"), ("X-Title", "nexpy")),
        ),
        Route("openai", "nex", "openai/", "https://api.openai.com/v1", key_env="OPENAI_API_KEY"),
        Route("oai-compat", "nex", OPENAI_COMPATIBLE, None, needs_endpoint=True),
        Route("stub", "nex", None, None, embedded=True),
        Route("claude", "claude", None, None, model_optional=True),
        Route("codex", "codex", None, None, model_optional=True),
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
    import difflib  # only for a mistyped prefix: not on every launch

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
        if not rest and not ROUTES[head.lower()].model_optional:
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


# -x/--executor is a deprecated alias kept for old scripts; it only ever selects a prefix.
EXECUTOR_PREFIX = {
    "nex": "local",
    "native": "local",
    "local": "local",
    "claude": "claude",
    "codex": "codex",
}


def default_endpoint(route: Route) -> str | None:
    """The route's server when none is given: its variable (OLLAMA_HOST), else the table's."""
    host = os.environ.get(route.endpoint_env) if route.endpoint_env else None
    if host:
        return host if "://" in host else f"http://{host}"
    return route.default_endpoint
