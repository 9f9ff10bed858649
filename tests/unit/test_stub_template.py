"""The stub's template mode: requests rendered as transformers' apply_chat_template renders them
(vLLM's preprocessing), refusals as vLLM's 400, every rendered prompt recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from stubs.oai import StubServer, stub_server
from stubs.template import TemplateRefusal, TemplateRenderer

ROOT = Path(__file__).resolve().parents[2]
CALL = {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"c": 1}'}}
HISTORY = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "out"},
]


def render(source: str, messages: list[dict[str, Any]] = HISTORY, **body: Any) -> str:
    return TemplateRenderer(source).render({"messages": messages, **body})


def test_whitespace_control_is_transformers() -> None:
    # trim_blocks eats the newline after a block tag, lstrip_blocks the indent before one.
    source = (
        "{% for m in messages %}\n  {% if m.role == 'user' %}\n"
        "[{{ m.content }}]\n  {% endif %}\n{% endfor %}"
    )
    assert render(source) == "[hi]\n"


def test_arguments_reach_the_template_as_an_object() -> None:
    source = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.arguments.c + 1 }}{% endfor %}{% endfor %}"
    )
    assert render(source) == "2"
    empty = {**CALL, "function": {"name": "bash", "arguments": ""}}
    messages = [HISTORY[1], {"role": "assistant", "content": None, "tool_calls": [empty]}]
    assert render("{{ messages[1].tool_calls[0].function.arguments | tojson }}", messages) == "{}"


def test_tojson_is_transformers_not_jinja2() -> None:
    # jinja2's own filter would HTML-escape "<" and sort keys; transformers' does neither.
    out = render("{{ {'b': '<é>', 'a': 1} | tojson }}")
    assert out == '{"b": "<é>", "a": 1}'
    assert render("{{ {'a': 1} | tojson(indent=2) }}") == '{\n  "a": 1\n}'


def test_globals_loopcontrols_generation_and_context() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% generation %}{{ m.role }}{% endgeneration %},{% endfor %}"
        "{{ strftime_now('%Y')|length }}{{ add_generation_prompt }}{{ tools[0].function.name }}"
        "{{ eos_token }}{{ flag }}"
    )
    tools = [{"type": "function", "function": {"name": "bash"}}]
    out = render(source, tools=tools, chat_template_kwargs={"flag": "F"})
    assert out == "<s>system,user,4Truebash</s>F"
    assert render("{{ tools is none }}") == "True"


def test_refusals_carry_the_template_message() -> None:
    with pytest.raises(TemplateRefusal, match=r"^no tools here$"):
        render("{{ raise_exception('no tools here') }}")
    # The sandbox is the immutable one: a template that mutates a list is refused, as on vLLM.
    with pytest.raises(TemplateRefusal, match="unsafe"):
        render("{% set xs = [] %}{{ xs.append(1) }}")
    with pytest.raises(TemplateRefusal, match="NoneType"):
        render("{% for m in messages %}{{ 'x' in m.content }}{% endfor %}")


def test_server_answers_vllm_400_and_records_prompts(tmp_path: Path) -> None:
    source = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    )
    with stub_server([{"content": "ok"}], template=TemplateRenderer(source)) as srv:
        refused = post(srv, HISTORY)
        assert refused.status_code == 400
        assert refused.json() == {
            "error": {
                "message": "System role not supported",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        }
        ok = post(srv, [{"role": "user", "content": "hi"}])
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"
        assert srv.prompts == [None, "<user>hi"]
        assert srv.rejections == [(0, "System role not supported")]
        assert httpx.get(srv.base_url + "/_stub/prompts").json() == [None, "<user>hi"]
        assert httpx.get(srv.base_url + "/props").status_code == 404  # no window: no /props


def test_command_line_template_flag(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stubs.oai", "--port", "0", "--template", str(template)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        r = httpx.post(url + "/chat/completions", json={"model": "m", "messages": HISTORY[1:2]})
        assert r.status_code == 200
        assert json.loads(httpx.get(url.removesuffix("/v1") + "/_stub/prompts").text) == ["hi"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(srv: StubServer, messages: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        srv.url + "/chat/completions", json={"model": "m", "messages": messages}, timeout=5
    )
