"""Window discovery: flag, config, the server, litellm (cloud only), else 8192 with a warning."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx

import nexpy.litellm_setup
from nexpy import window
from nexpy.config import Config
from nexpy.config_file import EndpointConfig
from nexpy.plan import SpawnPlan, SpawnRequest, plan_spawn
from nexpy.window import discover
from stubs.oai import stub_server
from stubs.ollama import OllamaServer


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "_cache", {})


@pytest.fixture
def no_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> Any:
        raise AssertionError("litellm must not be loaded to discover a local window")

    monkeypatch.setattr(nexpy.litellm_setup, "litellm", refuse)


def _plan(model: str, endpoint: str | None = None, window: int | None = None) -> SpawnPlan:
    return plan_spawn(SpawnRequest(model=model, endpoint=endpoint, context_window=window), Config())


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


async def test_the_flag_wins_without_asking_anyone(no_litellm: None) -> None:
    with stub_server(window=4096) as srv:
        found = await discover(_plan("local:m", srv.url, window=12_000))
    assert (found.tokens, found.source, found.warning) == (12_000, "--context-window", None)


async def test_the_endpoint_config_comes_next(no_litellm: None) -> None:
    config = Config(endpoints={"box": EndpointConfig(url=_dead_url(), context_window=6000)})
    plan = plan_spawn(SpawnRequest(model="local:m", endpoint="box"), config)
    found = await discover(plan)
    assert found.tokens == 6000 and "box" in found.source


async def test_llamacpp_props_on_a_real_socket(no_litellm: None) -> None:
    with stub_server(window=4096) as srv:
        found = await discover(_plan("local:anything", srv.url))
    assert (found.tokens, found.source) == (4096, "the server's /props")


@respx.mock
async def test_vllm_max_model_len_from_models(no_litellm: None) -> None:
    respx.get("http://gpu:8000/props").mock(return_value=httpx.Response(404))
    respx.get("http://gpu:8000/v1/models").mock(
        return_value=httpx.Response(
            200,
            json={
                "data": [
                    {"id": "other", "max_model_len": 4096},
                    {"id": "qwen3-coder", "max_model_len": 32_768},
                ]
            },
        )
    )
    found = await discover(_plan("vllm:qwen3-coder", "http://gpu:8000/v1"))
    assert (found.tokens, found.source) == (32_768, "the server's /v1/models")


@respx.mock
async def test_llamacpp_meta_n_ctx_not_the_training_context(no_litellm: None) -> None:
    respx.get("http://box:8080/props").mock(return_value=httpx.Response(500))
    respx.get("http://box:8080/v1/models").mock(
        return_value=httpx.Response(
            200, json={"data": [{"id": "x.gguf", "meta": {"n_ctx_train": 131_072, "n_ctx": 8000}}]}
        )
    )
    found = await discover(_plan("local:whatever", "http://box:8080/v1"))
    assert found.tokens == 8000


@respx.mock
@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"parameters": "stop <|im_end|>\nnum_ctx 4096", "model_info": {}}, 4096),
        ({"parameters": "num_ctx 65536"}, 8192),  # more than nex sends as num_ctx
        ({"model_info": {"qwen2.context_length": 32_768}}, 8192),
        ({"model_info": {"llama.context_length": 2048}}, 2048),
    ],
)
async def test_ollama_show(no_litellm: None, body: dict, tokens: int) -> None:
    route = respx.post("http://127.0.0.1:11434/api/show").mock(
        return_value=httpx.Response(200, json=body)
    )
    found = await discover(_plan("ollama:qwen3:8b", "http://127.0.0.1:11434"))
    assert found.tokens == tokens and "Ollama" in found.source
    assert route.calls.last.request.read() == b'{"model":"qwen3:8b"}'


@pytest.mark.parametrize(("length", "tokens"), [(4096, 4096), (131_072, 8192)])
async def test_ollama_show_on_a_real_socket(no_litellm: None, length: int, tokens: int) -> None:
    with OllamaServer(context_length=length) as srv:
        found = await discover(_plan("ollama:llama3.1:8b", srv.url))
        assert srv.shows == [{"model": "llama3.1:8b"}]
    assert found.tokens == tokens


async def test_nothing_answers_assume_8192_and_name_the_flag(no_litellm: None) -> None:
    found = await discover(_plan("local:m", _dead_url()))
    assert (found.tokens, found.source) == (8192, "default")
    assert found.warning is not None and "--context-window" in found.warning


@respx.mock
async def test_an_answer_is_cached_per_endpoint_and_model(no_litellm: None) -> None:
    props = respx.get("http://box:8080/props").mock(
        return_value=httpx.Response(200, json={"default_generation_settings": {"n_ctx": 2048}})
    )
    respx.get("http://box:8080/v1/models").mock(return_value=httpx.Response(404))
    for _ in range(3):
        assert (await discover(_plan("local:a", "http://box:8080/v1"))).tokens == 2048
    assert props.call_count == 1
    await discover(_plan("local:b", "http://box:8080/v1"))
    assert props.call_count == 2


@respx.mock(assert_all_called=False)
async def test_cloud_default_endpoints_ask_litellm_not_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def info(model: str) -> dict[str, int]:
        asked.append(model)
        return {"max_input_tokens": 128_000, "max_tokens": 16_384}

    monkeypatch.setattr(
        nexpy.litellm_setup, "litellm", lambda: SimpleNamespace(get_model_info=info)
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    found = await discover(_plan("openai:gpt-4o"))
    assert (found.tokens, found.source) == (128_000, "litellm's model info")
    assert asked == ["openai/gpt-4o"]
    assert not respx.calls  # no probe of api.openai.com


async def test_the_embedded_model_needs_no_probe_and_no_warning(no_litellm: None) -> None:
    found = await discover(_plan("stub:demo"))
    assert found.tokens == 8192 and found.warning is None
