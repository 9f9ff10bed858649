"""TOML configuration: a global file and a project-local one, merged field by field.

    model = "local:qwen3-coder"        # default model
    endpoint = "box"                   # default endpoint: a URL or a name below
    context_window = 32768
    sandbox = "workspace-write"        # bash's sandbox: read-only, workspace-write or off
    network = false                    # open the network inside the sandbox
    approval = "ask"                   # REPL approvals: ask, auto-edit or yolo (nexpy.approval)
    project_doc_max_tokens = 4096      # cap on AGENTS.md / CLAUDE.md text (nexpy.instructions)

    [endpoints.box]
    url = "http://10.0.0.5:8080"
    provider = "local"                 # the routing prefix a bare model name gets here
    api_key_env = "BOX_KEY"            # the *name* of the variable holding the key, never the key
    context_window = 16384
    headers = { "X-Team" = "nexpy" }
    temperature = 0.2                  # request settings for every model on this endpoint

    [models."qwen3-coder*"]            # request settings by model name or glob
    temperature = 0.7
    top_k = 20
    extra_body = { chat_template_kwargs = { enable_thinking = false } }

Precedence (DESIGN §2) is decided in `plan.plan_spawn`; this module only loads and says which
file each value came from.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nexpy.approval import Mode
from nexpy.errors import ConfigError

LOCAL_CONFIG = Path(".nex") / "config.toml"


class ModelSettings(BaseModel):
    """Request settings for a model (a `[models."GLOB"]` table) or an endpoint: only what the
    user sets goes on the wire; the server's (or the model's) own defaults stay in force."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    reasoning_effort: str | None = None
    extra_body: dict[str, Any] | None = None

    def given(self) -> dict[str, Any]:
        """The settings this table sets."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


SETTINGS = tuple(ModelSettings.model_fields)


class EndpointConfig(ModelSettings):
    url: str
    provider: str | None = None
    api_key_env: str | None = None
    context_window: int | None = Field(default=None, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)


class FileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    endpoint: str | None = None
    context_window: int | None = Field(default=None, gt=0)
    sandbox: str | None = None  # checked against the modes in nexpy.sandbox.choose
    network: bool | None = None
    approval: Mode | None = None
    project_doc_max_tokens: int | None = Field(default=None, gt=0)
    notify: float | None = Field(default=None, ge=0)
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    models: dict[str, ModelSettings] = Field(default_factory=dict)


@dataclass
class Config:
    """The merged configuration; `source[key]` names the file a value came from."""

    model: str | None = None
    endpoint: str | None = None
    context_window: int | None = None
    sandbox: str | None = None
    network: bool | None = None
    approval: Mode | None = None  # which mutating tools the REPL asks about (nexpy.approval)
    project_doc_max_tokens: int | None = None
    notify: float | None = None  # seconds: a longer REPL answer rings the terminal (nexpy.notify)
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    models: dict[str, ModelSettings] = field(default_factory=dict)  # by model name or glob
    source: dict[str, str] = field(default_factory=dict)


def global_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nexpy" / "config.toml"


def _display(path: Path, cwd: Path) -> str:
    if path == global_config_path():
        return "~/.config/nexpy/config.toml"
    try:
        return "./" + str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def read_file(path: Path) -> FileConfig:
    """Parse one config file; a syntax or schema error is a ConfigError naming file and line."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}", hint="fix or remove it") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {path} is not UTF-8 text (byte {e.start})", hint="save it as UTF-8"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    try:
        return FileConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"config {path}: {where}: {err['msg']}", hint="see README 'Configuration'"
        ) from e


def load_config(cwd: Path, *, global_path: Path | None = None) -> Config:
    """Merge the global file, then the project-local one over it."""
    merged = Config()
    for path in (global_path or global_config_path(), cwd / LOCAL_CONFIG):
        if not path.is_file():
            continue
        fc = read_file(path)
        label = _display(path, cwd)
        for key in (
            "model",
            "endpoint",
            "context_window",
            "sandbox",
            "network",
            "approval",
            "project_doc_max_tokens",
            "notify",
        ):
            value = getattr(fc, key)
            if value is not None:
                setattr(merged, key, value)
                merged.source[key] = label
        for name, ep in fc.endpoints.items():
            merged.endpoints[name] = ep
            merged.source[f"endpoints.{name}"] = label
        for pattern, settings in fc.models.items():
            merged.models[pattern] = settings
            merged.source[f"models.{pattern}"] = label
    return merged
