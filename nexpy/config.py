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
file each value came from. What a file may say is checked in `nexpy.config_file`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nexpy.approval import Mode

if TYPE_CHECKING:
    from nexpy.config_file import EndpointConfig, ModelSettings

LOCAL_CONFIG = Path(".nex") / "config.toml"


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


def load_config(cwd: Path, *, global_path: Path | None = None) -> Config:
    """Merge the global file, then the project-local one over it."""
    merged = Config()
    for path in (global_path or global_config_path(), cwd / LOCAL_CONFIG):
        if not path.is_file():
            continue
        from nexpy.config_file import read_file  # pydantic: only when there is a file to check

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
