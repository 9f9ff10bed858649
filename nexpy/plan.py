"""SpawnPlan: one function derives everything a run needs from what the user picked.

Precedence for every field: cli flag > env (NEX_MODEL, NEX_ENDPOINT, NEX_SANDBOX) >
./.nex/config.toml > ~/.config/nexpy/config.toml > default. An endpoint given for this run
always beats a configured default. Keys are never part of a plan: it holds the *name* of the
variable, read at call time (nexpy.credentials: the value may have been withdrawn from
the environment by then).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from nexpy.config import Config
from nexpy.credentials import getenv, redact
from nexpy.errors import ConfigError, UsageError
from nexpy.routing import EXECUTOR_PREFIX, ROUTES, ModelSpec, default_endpoint, parse_model
from nexpy.sandbox import Sandbox, choose

if TYPE_CHECKING:
    from nexpy.config_file import EndpointConfig, ModelSettings

DEFAULT_MODEL = "stub:demo"


@dataclass
class SpawnRequest:
    """What the user asked for on the command line (None: not given)."""

    model: str | None = None
    endpoint: str | None = None
    executor: str | None = None  # deprecated alias for a prefix
    context_window: int | None = None
    sandbox: str | None = None  # --sandbox MODE
    network: bool | None = None  # --network
    autonomous: bool = False  # no person to ask: the sandbox defaults to workspace-write


@dataclass
class SpawnPlan:
    handler: str
    spec: ModelSpec
    endpoint: str | None
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    context_window: int | None = None
    argv: list[str] = field(default_factory=list)  # for the CLI handlers
    env: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sandbox: Sandbox = field(default_factory=Sandbox)
    # Request settings the user configured (temperature, top_k, extra_body, ...), and where
    # each came from; nothing else is sent, so the server's recommended sampling stays.
    settings: dict[str, Any] = field(default_factory=dict)
    settings_source: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model name as it goes on the wire (prefix stripped)."""
        return self.spec.name

    @property
    def litellm_model(self) -> str | None:
        prefix = self.spec.route.litellm_prefix
        return f"{prefix}{self.spec.name}" if prefix else None

    def api_key(self) -> str | None:
        return getenv(self.api_key_env) if self.api_key_env else None

    @property
    def header_secrets(self) -> list[str]:
        """The header values that came from config: secrets (a token in `X-Api-Token`, …)."""
        public = set(self.spec.route.headers)  # how nex names itself to a provider
        return [v for k, v in self.headers.items() if (k, v) not in public]

    def line(self) -> str:
        """The provenance line logged once per run. Never contains a key."""
        parts = [f"handler={self.handler} (from {self.provenance.get('handler', 'default')})"]
        parts.append(f"model={self.spec} (from {self.provenance.get('model', 'default')})")
        if self.endpoint:
            parts.append(f"endpoint={self.endpoint} (from {self.provenance.get('endpoint')})")
        if self.context_window:
            src = self.provenance.get("context_window")
            parts.append(f"context_window={self.context_window} (from {src})")
        parts.append(f"sandbox={self.sandbox.describe()} (from {self.provenance.get('sandbox')})")
        for key, value in self.settings.items():
            shown = json.dumps(value, separators=(",", ":"))
            parts.append(f"{key}={shown} (from {self.settings_source[key]})")
        if self.api_key_env:
            state = "set" if self.api_key() else "NOT SET"
            parts.append(f"key=${self.api_key_env} ({state})")
        if self.argv:
            parts.append("argv=" + redact(shlex.join(self.argv)))
        if self.env:
            parts.append("env=" + redact(" ".join(f"{k}={v}" for k, v in self.env.items())))
        return "plan: " + ", ".join(parts)


_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+:\d+(/.*)?$")


def normalize_url(url: str, *, add_v1: bool) -> str:
    """Validate an endpoint URL; one without a path gets /v1 (OpenAI-style servers)."""
    if _HOSTPORT.match(url):
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(url)
    url = url.rstrip("/")
    if add_v1 and parts.path in ("", "/"):
        url += "/v1"
    return url


def _looks_like_url(value: str) -> bool:
    return "://" in value or bool(_HOSTPORT.match(value))


def plan_spawn(
    request: SpawnRequest, config: Config, environ: Mapping[str, str] | None = None
) -> SpawnPlan:
    """Decide handler, model, endpoint, key, window and the provenance of each.

    The one place that decides which route, and so which handler, runs: the model's prefix, or
    a configured endpoint's `provider` for a bare model name (nexpy.routing holds the table).
    """
    env = os.environ if environ is None else environ
    prov: dict[str, str] = {}
    warnings: list[str] = []

    # -- model ---------------------------------------------------------------------------
    model, prov["model"] = _first(
        (request.model, "-m"),
        (env.get("NEX_MODEL"), "env NEX_MODEL"),
        (config.model, config.source.get("model")),
    )
    if request.executor is not None:
        prefix = EXECUTOR_PREFIX.get(request.executor.lower())
        if prefix is None:
            raise UsageError(
                f"unknown executor {request.executor!r}",
                hint="-x is deprecated; pick a handler with the model prefix, e.g. -m claude:opus",
            )
        warnings.append(
            f"-x/--executor is deprecated: use -m {prefix}:MODEL (mapped -x {request.executor} "
            f"to prefix {prefix}:)"
        )
        bare = parse_model(model).name if model else ""
        model = f"{prefix}:{bare}" if bare or prefix in ("claude", "codex") else None
        prov["model"] += " + -x"

    # -- endpoint ------------------------------------------------------------------------
    ep_value, ep_source = _first(
        (request.endpoint, "-e"),
        (env.get("NEX_ENDPOINT"), "env NEX_ENDPOINT"),
        (config.endpoint, config.source.get("endpoint")),
    )
    named: EndpointConfig | None = None
    if ep_value is not None and not _looks_like_url(ep_value):
        named = config.endpoints.get(ep_value)
        if named is None:
            known = ", ".join(sorted(config.endpoints)) or "none configured"
            err = UsageError if ep_source == "-e" else ConfigError
            raise err(
                f"endpoint {ep_value!r} (from {ep_source}) is neither a URL nor a configured "
                f"endpoint name (known: {known})",
                hint="pass a URL such as -e http://127.0.0.1:8080 or add [endpoints.NAME] "
                "to the config",
            )

    if model is None:
        # An endpoint alone means "the model that server serves"; llama.cpp ignores the name.
        model = "default" if ep_value is not None else DEFAULT_MODEL
    spec = parse_model(model)
    if named is not None and named.provider and not spec.explicit_prefix:
        if named.provider not in ROUTES:
            raise ConfigError(
                f"endpoint {ep_value!r}: unknown provider {named.provider!r}",
                hint=f"known: {', '.join(ROUTES)}",
            )
        spec = ModelSpec(ROUTES[named.provider], spec.name, explicit_prefix=True)
    route = spec.route
    prov["handler"] = "model prefix" if spec.explicit_prefix else "default prefix"

    endpoint: str | None
    raw: str | None
    if named is not None:
        raw, prov["endpoint"] = named.url, f"{ep_source}: endpoint {ep_value!r}"
    elif ep_value is not None:
        raw, prov["endpoint"] = ep_value, ep_source
    else:
        raw, prov["endpoint"] = default_endpoint(route), "routing table default"
    # The stub needs no server; the CLIs own their auth and only take an endpoint given for
    # this run (a configured default endpoint is for nex's own loop).
    cli_default = route.handler != "nex" and named is None and ep_source != "-e"
    if route.embedded or cli_default:
        endpoint = None
    elif raw is None:
        if route.needs_endpoint:
            raise UsageError(
                f"model {spec} needs an endpoint", hint="pass -e URL or a configured endpoint name"
            )
        endpoint = None
    else:
        try:
            endpoint = normalize_url(raw, add_v1=route.add_v1)
        except ValueError:
            raise UsageError(
                f"endpoint {raw!r} (from {prov['endpoint']}) is not an http(s) URL",
                hint="write it as http://HOST:PORT",
            ) from None

    # -- key, headers, window ------------------------------------------------------------
    api_key_env = route.key_env
    headers: dict[str, str] = {}
    if named is not None:
        api_key_env = named.api_key_env or api_key_env
        headers = dict(named.headers)
    for name, value in route.headers:
        headers.setdefault(name, value)

    window, prov["context_window"] = _first(
        (request.context_window, "--context-window"),
        (named.context_window if named else None, f"endpoint {ep_value!r}"),
        (config.context_window, config.source.get("context_window")),
    )
    # -- sandbox (nex's own bash; the CLI handlers run their tools under their own rules) --
    sandbox, prov["sandbox"] = Sandbox(note=f"{route.handler} runs its own tools"), "handler"
    if route.handler == "nex":
        network, _ = _first((request.network, "--network"), (config.network, "config"))
        sandbox, prov["sandbox"], more = choose(
            flag=request.sandbox,
            env=env,
            config=config.sandbox,
            config_source=config.source.get("sandbox"),
            autonomous=request.autonomous,
            network=bool(network),
        )
        warnings += more
    plan = SpawnPlan(
        handler=route.handler,
        spec=spec,
        endpoint=endpoint,
        api_key_env=api_key_env,
        headers=headers,
        context_window=window,
        provenance=prov,
        warnings=warnings,
        sandbox=sandbox,
    )
    if route.handler == "nex":
        plan.settings, plan.settings_source = model_settings(
            config, spec, named, ep_value if named is not None else None
        )
    if plan.handler != "nex":
        plan.argv, plan.env = _cli_command(plan)
    return plan


def model_settings(
    config: Config, spec: ModelSpec, endpoint: EndpointConfig | None, endpoint_name: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The request settings for `spec`, each from the most specific table that sets it:

        [models."NAME"] (exact)  >  [models."GLOB"] (the longest glob first)  >  [endpoints.E]

    A name or glob matches the model with or without its prefix (`local:qwen3`, `qwen3`).
    Returns the settings and, for each, where it came from (for the plan line).
    """
    names = {str(spec), spec.name}
    exact = [p for p in config.models if p in names]
    globs = sorted(
        (p for p in config.models if p not in names and any(fnmatchcase(n, p) for n in names)),
        key=lambda p: (-len(p), p),
    )
    tables: list[tuple[ModelSettings, str]] = [
        (config.models[p], f"models.{p!r} in {config.source.get(f'models.{p}', 'config')}")
        for p in (*exact, *globs)
    ]
    if endpoint is not None and endpoint_name is not None:
        where = config.source.get(f"endpoints.{endpoint_name}", "config")
        tables.append((endpoint, f"endpoints.{endpoint_name} in {where}"))
    if not tables:
        return {}, {}
    from nexpy.config_file import SETTINGS  # pydantic: loaded only when a config file exists

    settings: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key in SETTINGS:
        for table, where in tables:
            value = getattr(table, key)
            if value is not None:
                settings[key], source[key] = value, where
                break
    return settings, source


CODEX_PROVIDER = "nex"  # the id of the custom model provider `-e` becomes for codex


def _cli_command(plan: SpawnPlan) -> tuple[list[str], dict[str, str]]:
    """The fixed part of a CLI handler's command line and the environment it adds.

    The handler appends what changes per turn (resume id, permission flags, the message). Like
    the rest of the plan this never holds a key, only the name of the variable holding one.
    """
    model = plan.spec.name
    if plan.handler == "claude":
        argv = ["claude", "-p", "--output-format", "stream-json", "--verbose"]
        if model:
            argv += ["--model", model]
        # No telemetry, update check or other lookups from a run nex starts (DESIGN §8).
        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        if plan.endpoint:
            # The Anthropic client appends /v1/messages itself.
            env["ANTHROPIC_BASE_URL"] = plan.endpoint.removesuffix("/v1")
        return argv, env
    argv = ["codex", "exec", "--json", "--skip-git-repo-check"]
    if model:
        argv += ["-m", model]
    argv += ["-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"]
    if plan.endpoint:
        # codex 0.169 speaks only the Responses API; a provider defined by flags needs no
        # config file. Without env_key it sends no Authorization header.
        provider = f"model_providers.{CODEX_PROVIDER}"
        argv += [
            "-c",
            f"model_provider={CODEX_PROVIDER}",
            "-c",
            f"{provider}.name={CODEX_PROVIDER}",
            "-c",
            f"{provider}.base_url={json.dumps(plan.endpoint)}",
            "-c",
            f"{provider}.wire_api=responses",
        ]
        if plan.api_key_env:
            argv += ["-c", f"{provider}.env_key={plan.api_key_env}"]
    return argv, {}


T = TypeVar("T")


def _first(*candidates: tuple[T | None, str | None]) -> tuple[T | None, str]:
    """The first given value and where it came from; (None, "default") when none is."""
    for value, source in candidates:
        if value is not None:
            return value, source or "config"
    return None, "default"
