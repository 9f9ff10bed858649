"""What a config file may say, checked by pydantic: the schema and the reader of one file.

Kept apart from `nexpy.config` because pydantic costs tens of milliseconds to import and to build
these models, on the main thread before the REPL prompt: it loads only when a config file exists
(litellm, which every route imports in the background, loads it anyway).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nexpy.approval import Mode
from nexpy.errors import ConfigError


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
