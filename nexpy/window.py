"""Window discovery: how many tokens the model behind an endpoint takes, asked once per process.

The first source that answers wins:
1. ``--context-window``, then the endpoint's ``context_window`` in the config (both already in
   the plan, with their provenance);
2. the server itself: llama.cpp ``/props`` (``default_generation_settings.n_ctx``) and
   ``/v1/models`` (``meta.n_ctx``), vLLM ``/v1/models`` (``max_model_len``), Ollama ``/api/show``
   (the model's ``num_ctx`` parameter or context length, at most ``OLLAMA_NUM_CTX``);
3. litellm's model info, for cloud routes only: it needs litellm imported, which a local route
   should not wait for just for this;
4. else 8192, with a one-line warning naming the flag.
A server answer is cached per endpoint and model, so agents started later in the same process
(the REPL's /load, the bench's concurrent sessions) do not ask again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexpy.budget import DEFAULT_WINDOW
from nexpy.plan import SpawnPlan

if TYPE_CHECKING:
    import httpx

PROBE_TIMEOUT = 2.0  # seconds per probe; a local server answers in milliseconds
# The num_ctx nex sends Ollama without --context-window (agent.build_model), so the most a window
# there can be. Ollama silently cuts the start of a longer prompt, and it allocates the KV cache
# for the whole num_ctx, so a model's full trained context (often 128k) is not the default.
OLLAMA_NUM_CTX = DEFAULT_WINDOW

_cache: dict[tuple[str, str], Window] = {}


@dataclass(frozen=True)
class Window:
    """A context window in tokens and where the figure came from."""

    tokens: int
    source: str
    warning: str | None = None
    template: str | None = None  # the chat template, where the server publishes it (/props)


async def discover(plan: SpawnPlan, *, timeout: float = PROBE_TIMEOUT) -> Window:
    """The context window for `plan`'s model: flag, config, server, litellm, else 8192."""
    if plan.context_window:
        return Window(plan.context_window, plan.provenance.get("context_window") or "config")
    route = plan.spec.route
    if route.embedded:
        return Window(DEFAULT_WINDOW, "the embedded model")
    key = (plan.endpoint or route.prefix, plan.model)
    if key in _cache:
        return _cache[key]
    found: Window | None = None
    cloud = route.key_env is not None
    if plan.endpoint and not (cloud and plan.endpoint == route.default_endpoint):
        found = await _ask_server(plan, timeout)
    if found is None and cloud:
        found = await asyncio.to_thread(_ask_litellm, plan)
    if found is None:
        return Window(
            DEFAULT_WINDOW,
            "default",
            warning=(
                f"the context window of {plan.spec} is unknown (the server does not say); "
                f"assuming {DEFAULT_WINDOW} tokens: set --context-window N"
            ),
        )
    _cache[key] = found
    return found


def _client(plan: SpawnPlan, timeout: float) -> httpx.AsyncClient:
    import httpx

    headers = dict(plan.headers)
    key = plan.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(1.0, timeout)), headers=headers
    )


async def _ask_server(plan: SpawnPlan, timeout: float) -> Window | None:
    # Importing httpx and loading its CA bundle take ~100 ms of CPU; the REPL probes right after
    # its prompt is drawn, and on the loop's thread that would hold back the first keystrokes.
    client = await asyncio.to_thread(_client, plan, timeout)
    endpoint = (plan.endpoint or "").rstrip("/")
    async with client:
        if plan.spec.route.native_api == "ollama":
            show = await _json(client.post(f"{endpoint}/api/show", json={"model": plan.model}))
            return _from_ollama(show)
        root = endpoint[: -len("/v1")] if endpoint.endswith("/v1") else endpoint
        props, models = await asyncio.gather(
            _json(client.get(f"{root}/props")), _json(client.get(f"{endpoint}/models"))
        )
    return _from_props(props) or _from_models(models, plan.model)


async def _json(call: Any) -> Any:
    """The JSON body of a successful response, or None for any failure (it is only a probe)."""
    try:
        response = await call
        if response.status_code != 200:
            return None
        return response.json()
    except Exception:
        return None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _from_props(body: Any) -> Window | None:
    """llama.cpp's /props: the per-slot window the server was started with (-c / -np)."""
    if not isinstance(body, dict):
        return None
    settings = body.get("default_generation_settings")
    n_ctx = _positive(settings.get("n_ctx")) if isinstance(settings, dict) else None
    n_ctx = n_ctx or _positive(body.get("n_ctx"))
    template = body.get("chat_template")
    template = template if isinstance(template, str) and template.strip() else None
    return Window(n_ctx, "the server's /props", template=template) if n_ctx else None


def _from_models(body: Any, model: str) -> Window | None:
    """/v1/models: vLLM's max_model_len, llama.cpp's meta.n_ctx, or a context_length field.

    meta.n_ctx_train is left alone: it is what the model was trained on, not what the server
    runs it with.
    """
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    entries = [e for e in entries if isinstance(e, dict)]
    chosen = next((e for e in entries if e.get("id") == model), None)
    if chosen is None and len(entries) == 1:
        chosen = entries[0]  # llama.cpp serves one model whatever it is called
    if chosen is None:
        return None
    meta = chosen.get("meta")
    for value in (
        chosen.get("max_model_len"),
        meta.get("n_ctx") if isinstance(meta, dict) else None,
        chosen.get("context_length"),
        chosen.get("max_context_length"),
    ):
        if (tokens := _positive(value)) is not None:
            return Window(tokens, "the server's /v1/models")
    return None


def _from_ollama(body: Any) -> Window | None:
    """Ollama's /api/show: the model's num_ctx parameter, else its context length, capped."""
    if not isinstance(body, dict):
        return None
    parameters = body.get("parameters")
    if isinstance(parameters, str):
        for line in parameters.splitlines():
            name, _, value = line.strip().partition(" ")
            if name == "num_ctx" and value.strip().isdigit():
                return Window(min(int(value.strip()), OLLAMA_NUM_CTX), "Ollama /api/show num_ctx")
    info = body.get("model_info")
    if isinstance(info, dict):
        for name, value in info.items():
            if name.endswith(".context_length") and (tokens := _positive(value)):
                return Window(min(tokens, OLLAMA_NUM_CTX), "Ollama /api/show context length")
    return None


def _ask_litellm(plan: SpawnPlan) -> Window | None:
    """litellm's bundled model map (no network: the cost map is local, DESIGN §8)."""
    from nexpy.litellm_setup import litellm

    try:
        info = litellm().get_model_info(plan.litellm_model)
    except Exception:
        return None
    tokens = _positive(info.get("max_input_tokens")) or _positive(info.get("max_tokens"))
    return Window(tokens, "litellm's model info") if tokens else None
