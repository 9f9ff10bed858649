"""Per-model settings reach the wire: nex as a subprocess against the stub (issue 15 item 5)."""

from __future__ import annotations

import pytest

from stubs.oai import stub_server
from tests.conftest import NexEnv

pytestmark = pytest.mark.timeout(300)

CONFIG = """
[models."stub-*"]
temperature = 0.3
top_p = 0.9
top_k = 17
min_p = 0.02
max_tokens = 77
reasoning_effort = "low"
extra_body = { chat_template_kwargs = { enable_thinking = false } }
"""


def test_configured_settings_reach_the_request_body(nex_env: NexEnv) -> None:
    nex_env.write_config(CONFIG)
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        result = nex_env.run("-m", "local:stub-model", "-e", srv.url, "--autonomous", "hi")
        other = nex_env.run("-m", "local:other", "-e", srv.url, "--autonomous", "hi")
    assert (result.code, other.code) == (0, 0), result.stderr + other.stderr
    body = srv.requests[0]
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert (body["top_k"], body["min_p"], body["max_tokens"]) == (17, 0.02, 77)
    assert body["reasoning_effort"] == "low"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "temperature=0.3 (from models.'stub-*' in ~/.config/nexpy/config.toml)" in result.stderr
    # A model the table does not match sends none of them: the server's defaults apply.
    plain = srv.requests[1]
    for key in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "reasoning_effort",
        "chat_template_kwargs",
    ):
        assert key not in plain, key
