"""Routing table, model specs, config precedence and the provenance line (DESIGN §1-2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexpy.config import Config, load_config
from nexpy.errors import ConfigError, UsageError
from nexpy.plan import SpawnRequest, normalize_url, plan_spawn
from nexpy.routing import ROUTES, parse_model


@pytest.mark.parametrize(
    ("spec", "handler", "name"),
    [
        ("local:qwen3-coder", "nex", "qwen3-coder"),
        ("ollama:qwen3:8b", "nex", "qwen3:8b"),
        ("qwen3:32b", "nex", "qwen3:32b"),  # a bare name with a colon is not a prefix
        ("claude:opus", "claude", "opus"),
        ("codex:gpt-5", "codex", "gpt-5"),
        ("stub:demo", "nex", "demo"),
        ("OpenRouter:meta/llama", "nex", "meta/llama"),
    ],
)
def test_model_prefix_is_read_only_from_the_table(spec: str, handler: str, name: str) -> None:
    parsed = parse_model(spec)
    assert parsed.handler == handler
    assert plan_spawn(SpawnRequest(model=spec), Config()).handler == handler
    assert parsed.name == name


@pytest.mark.parametrize("typo", ["lcoal:qwen", "olama:x", "claud:opus", "codx:gpt"])
def test_prefix_typo_is_a_usage_error_with_did_you_mean(typo: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_model(typo)
    assert "did you mean" in err.value.line()
    assert err.value.exit_code == 2


def test_every_route_has_a_handler_and_nex_routes_have_litellm_or_stub() -> None:
    for route in ROUTES.values():
        assert route.handler in ("nex", "claude", "codex")
        if route.handler == "nex" and route.prefix != "stub":
            assert route.litellm_prefix


def test_url_without_path_gets_v1_but_not_for_ollama() -> None:
    assert normalize_url("http://h:8080", add_v1=True) == "http://h:8080/v1"
    assert normalize_url("http://h:8080/", add_v1=True) == "http://h:8080/v1"
    assert normalize_url("http://h:8080/api/v2", add_v1=True) == "http://h:8080/api/v2"
    assert normalize_url("http://h:11434", add_v1=False) == "http://h:11434"
    assert normalize_url("127.0.0.1:8080", add_v1=True) == "http://127.0.0.1:8080/v1"


def _config(tmp_path: Path, text: str, *, local: str | None = None):
    global_path = tmp_path / "global.toml"
    global_path.write_text(text)
    if local is not None:
        (tmp_path / ".nex").mkdir(exist_ok=True)
        (tmp_path / ".nex" / "config.toml").write_text(local)
    return load_config(tmp_path, global_path=global_path)


def test_cli_endpoint_beats_configured_default_and_provenance_says_so(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        'model = "local:qwen"\nendpoint = "box"\n[endpoints.box]\nurl = "http://10.1.1.1:8080"\n',
    )
    plan = plan_spawn(SpawnRequest(endpoint="http://127.0.0.1:9999"), config, {})
    assert plan.endpoint == "http://127.0.0.1:9999/v1"
    assert "endpoint=http://127.0.0.1:9999/v1 (from -e)" in plan.line()
    configured = plan_spawn(SpawnRequest(), config, {})
    assert configured.endpoint == "http://10.1.1.1:8080/v1"
    assert "from ~/.config/nexpy/config.toml" in configured.line() or "global.toml" in (
        configured.line()
    )


def test_precedence_cli_env_local_global_default(tmp_path: Path) -> None:
    config = _config(
        tmp_path, 'model = "local:from-global"\n', local='model = "local:from-local"\n'
    )
    assert plan_spawn(SpawnRequest(), config, {}).model == "from-local"
    env = {"NEX_MODEL": "local:from-env"}
    assert plan_spawn(SpawnRequest(), config, env).model == "from-env"
    assert plan_spawn(SpawnRequest(model="local:from-cli"), config, env).model == "from-cli"
    plan = plan_spawn(SpawnRequest(model="local:from-cli"), config, env)
    assert "(from -m)" in plan.line()


def test_named_endpoint_brings_provider_key_env_headers_and_window(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "[endpoints.lab]\n"
        'url = "http://lab:8000"\nprovider = "vllm"\napi_key_env = "LAB_KEY"\n'
        'context_window = 16384\nheaders = { "X-Team" = "nexpy" }\n',
    )
    plan = plan_spawn(SpawnRequest(model="qwen", endpoint="lab"), config, {})
    assert plan.spec.route.prefix == "vllm"
    assert plan.api_key_env == "LAB_KEY"
    assert plan.headers == {"X-Team": "nexpy"}
    assert plan.context_window == 16384
    assert plan.endpoint == "http://lab:8000/v1"


def test_endpoint_neither_url_nor_name_is_a_usage_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    with pytest.raises(UsageError) as err:
        plan_spawn(SpawnRequest(model="local:x", endpoint="nowhere"), config, {})
    assert "neither a URL nor a configured endpoint" in err.value.message


def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "model = \n")
    assert "global.toml" in err.value.message
    assert err.value.exit_code == 2


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="modle"):
        _config(tmp_path, 'modle = "x"\n')


def test_executor_alias_maps_to_prefix_with_one_warning(tmp_path: Path) -> None:
    plan = plan_spawn(SpawnRequest(model="opus", executor="claude"), _config(tmp_path, ""), {})
    assert plan.handler == "claude"
    assert len(plan.warnings) == 1 and "deprecated" in plan.warnings[0]


def test_key_value_never_in_plan_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-sentinel-123456789")
    plan = plan_spawn(SpawnRequest(model="openrouter:meta/llama"), _config(tmp_path, ""), {})
    assert plan.api_key() == "sk-sentinel-123456789"
    assert "sk-sentinel" not in plan.line()
    assert "$OPENROUTER_API_KEY (set)" in plan.line()


def test_oai_compat_needs_an_endpoint(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs an endpoint"):
        plan_spawn(SpawnRequest(model="oai-compat:x"), _config(tmp_path, ""), {})


def test_no_model_anywhere_is_the_embedded_demo(tmp_path: Path) -> None:
    plan = plan_spawn(SpawnRequest(), _config(tmp_path, ""), {})
    assert str(plan.spec) == "stub:demo" and plan.endpoint is None
