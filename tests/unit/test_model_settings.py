"""Per-model and per-endpoint request settings (nexpy.plan.model_settings): precedence,
provenance in the plan line, and only what the user set reaching the request."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexpy.config import load_config
from nexpy.errors import ConfigError
from nexpy.plan import SpawnRequest, plan_spawn
from nexpy.provider import LitellmModel


def _config(tmp_path: Path, text: str, local: str = "") -> Path:
    (tmp_path / "global.toml").write_text(text)
    if local:
        (tmp_path / ".nex").mkdir()
        (tmp_path / ".nex" / "config.toml").write_text(local)
    return tmp_path / "global.toml"


def _plan(tmp_path: Path, model: str, endpoint: str | None = None):  # type: ignore[no-untyped-def]
    config = load_config(tmp_path, global_path=tmp_path / "global.toml")
    return plan_spawn(SpawnRequest(model, endpoint), config, environ={})


GLOBAL = """
[endpoints.box]
url = "http://10.0.0.5:8080"
temperature = 0.1
top_p = 0.5
min_p = 0.05

[models."qwen3*"]
temperature = 0.6
top_k = 40

[models."qwen3-coder*"]
top_k = 20
extra_body = { chat_template_kwargs = { enable_thinking = false } }

[models."local:qwen3-coder"]
max_tokens = 1024
"""


def test_exact_beats_longer_glob_beats_shorter_glob_beats_endpoint(tmp_path: Path) -> None:
    _config(tmp_path, GLOBAL)
    plan = _plan(tmp_path, "local:qwen3-coder", "box")
    assert plan.settings == {
        "temperature": 0.6,  # models."qwen3*" over the endpoint's 0.1
        "top_p": 0.5,  # only the endpoint sets it
        "top_k": 20,  # the longer glob
        "min_p": 0.05,
        "max_tokens": 1024,  # the exact name, prefix included
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    assert plan.settings_source["top_k"].startswith("models.'qwen3-coder*' in ")
    assert plan.settings_source["top_p"].startswith("endpoints.box in ")
    line = plan.line()
    assert "temperature=0.6 (from models.'qwen3*' in" in line
    assert 'extra_body={"chat_template_kwargs":{"enable_thinking":false}}' in line


def test_nothing_configured_means_nothing_set(tmp_path: Path) -> None:
    _config(tmp_path, GLOBAL)
    plan = _plan(tmp_path, "local:llama3", "http://127.0.0.1:9/v1")
    assert plan.settings == {} and "temperature" not in plan.line()
    kwargs = LitellmModel(plan, window=8192).request_kwargs([], None, stream=True, max_tokens=500)
    for key in ("temperature", "top_p", "reasoning_effort"):
        assert key not in kwargs
    assert kwargs["max_tokens"] == 500
    # Only what llama.cpp (the local route's server) reads to keep its prompt cache.
    assert kwargs["extra_body"] == {"cache_prompt": True}


def test_ollama_keeps_the_model_loaded_between_turns(tmp_path: Path) -> None:
    _config(tmp_path, "")
    plan = _plan(tmp_path, "ollama:qwen3:8b", "http://127.0.0.1:9")
    kwargs = LitellmModel(plan, window=8192).request_kwargs([], None, stream=True, max_tokens=500)
    # litellm's ollama_chat puts it at the top of the /api/chat body (checked on the stub).
    assert kwargs["extra_body"] == {"keep_alive": "30m"}


@pytest.mark.parametrize("model", ["vllm:llama3", "openai:gpt-4.1", "oai-compat:m"])
def test_servers_that_may_refuse_unknown_fields_get_none(tmp_path: Path, model: str) -> None:
    _config(tmp_path, "")
    plan = _plan(tmp_path, model, "http://127.0.0.1:9/v1")
    kwargs = LitellmModel(plan, window=8192).request_kwargs([], None, stream=True, max_tokens=500)
    assert "extra_body" not in kwargs


def test_the_local_file_overrides_a_table_of_the_same_name(tmp_path: Path) -> None:
    _config(tmp_path, GLOBAL, local='[models."qwen3*"]\ntemperature = 0.9\n')
    plan = _plan(tmp_path, "qwen3-8b", "http://127.0.0.1:9/v1")
    assert plan.settings == {"temperature": 0.9}  # the global table is replaced, top_k gone
    assert plan.settings_source["temperature"] == "models.'qwen3*' in ./.nex/config.toml"


def test_request_kwargs_put_non_openai_fields_in_the_body(tmp_path: Path) -> None:
    _config(tmp_path, GLOBAL)
    plan = _plan(tmp_path, "local:qwen3-coder", "box")
    kwargs = LitellmModel(plan, window=8192).request_kwargs([], None, stream=True, max_tokens=4096)
    assert (kwargs["temperature"], kwargs["top_p"]) == (0.6, 0.5)
    assert kwargs["max_tokens"] == 1024  # the user's lower cap
    assert kwargs["extra_body"] == {
        "cache_prompt": True,
        "top_k": 20,
        "min_p": 0.05,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    # A configured cap never raises what the context budget reserved for the reply.
    assert (
        LitellmModel(plan).request_kwargs([], None, stream=True, max_tokens=300)["max_tokens"]
        == 300
    )


def test_a_bad_value_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    _config(tmp_path, '[models."x"]\ntop_p = 3\n')
    with pytest.raises(ConfigError) as e:
        _plan(tmp_path, "x")
    assert "models.x.top_p" in e.value.message
