"""nexpy.adapt: each rule is learned from the refusal it answers, keeps every piece of content,
and makes a template that refuses the normal request render it (transformers' engine)."""

from __future__ import annotations

import json

import pytest

from nexpy import adapt
from nexpy.messages import INTERRUPTED, normalize
from nexpy.toolcalls import TextCallExtractor, tool_parameters
from stubs.template import TemplateRefusal, TemplateRenderer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]


def _call(call_id: str, command: str) -> dict:
    arguments = json.dumps({"command": command})
    return {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": arguments}}


def body(*, parallel: bool = True) -> dict:
    calls = [_call("call_1", "echo a"), _call("call_2", "echo b")] if parallel else []
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": None, "tool_calls": calls or [_call("call_1", "echo a")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "out-a"},
    ]
    if parallel:
        messages.append({"role": "tool", "tool_call_id": "call_2", "content": "out-b"})
    messages.append({"role": "user", "content": "next"})
    return {"model": "m", "messages": normalize(messages), "tools": TOOLS}


def texts(b: dict) -> str:
    return json.dumps(b)


def assert_kept(before: dict, after: dict) -> None:
    for needle in ("be brief", "do it", "echo a", "out-a", "next"):
        if needle in texts(before):
            assert needle in texts(after), needle


# The refusal each rule is learned from, as the real templates word it (tests/conformance).
REFUSALS = {
    "content-string": "TypeError: argument of type 'NoneType' is not iterable",
    "single-tool-call": "This model only supports single tool-calls at once!",
    "short-tool-ids": "Tool call IDs should be alphanumeric strings with length 9!",
    "assistant-between": "After the optional system message, conversation roles must "
    "alternate user/assistant/user/assistant/...",
    "tools-in-prompt": "'functions' is undefined",
    "system-in-user": "System role not supported",
}


def test_every_rule_has_a_refusal_and_is_learned_from_it() -> None:
    assert set(REFUSALS) == {r.name for r in adapt.RULES}
    for name, refusal in REFUSALS.items():
        learned = adapt.learn(refusal)
        assert learned is not None and learned.name == name, refusal
    assert adapt.learn("the request exceeds the available context size") is None
    # tool-call code only llama.cpp's engine runs, refused by transformers' sandbox
    for refusal in (
        "access to attribute 'append' of 'list' object is unsafe.",  # Kimi K2
        "TypeError: Object of type generator is not JSON serializable",  # llama.cpp's R1
    ):
        assert adapt.learn(refusal) == adapt.rule("tools-in-prompt"), refusal
    # nex leaves "content" out of a call-only assistant turn; templates that read it say so.
    for refusal in (
        "'dict object' has no attribute 'content'",
        "Object of type Undefined is not JSON serializable",
    ):
        assert adapt.learn(refusal) == adapt.rule("content-string")
    # A rule already learned is not learned again: the next one that answers is.
    assert adapt.learn(REFUSALS["assistant-between"], ["assistant-between"]) == adapt.rule(
        "tools-in-prompt"
    )


def test_content_string() -> None:
    before = body()
    # normalize now sends "" itself; the rule still covers a null (or left-out) content that
    # reaches the wire another way, e.g. through a client library.
    before["messages"][2]["content"] = None
    after = adapt.apply(["content-string"], before)
    assert [m["content"] for m in after["messages"] if m.get("tool_calls")] == [""]
    assert before["messages"][2]["content"] is None  # the input is not touched
    assert_kept(before, after)
    template = "{% for m in messages %}{{ 'x' in m.content }}{% endfor %}"
    with pytest.raises(TemplateRefusal, match="NoneType"):
        TemplateRenderer(template).render(before)
    TemplateRenderer(template).render(after)


def test_single_tool_call_pairs_each_call_with_its_result() -> None:
    after = adapt.apply(["single-tool-call"], body())
    shape = [(m["role"], m.get("tool_call_id") or [c["id"] for c in m.get("tool_calls", [])])
             for m in after["messages"][2:6]]  # fmt: skip
    assert shape == [
        ("assistant", ["call_1"]),
        ("tool", "call_1"),
        ("assistant", ["call_2"]),
        ("tool", "call_2"),
    ]
    assert_kept(body(), after)
    assert "out-b" in texts(after)


def test_short_tool_ids_are_consistent() -> None:
    after = adapt.apply(["short-tool-ids"], body())
    ids = [c["id"] for m in after["messages"] for c in m.get("tool_calls", [])]
    results = [m["tool_call_id"] for m in after["messages"] if m["role"] == "tool"]
    assert ids == results and len(set(ids)) == 2
    assert all(len(i) == 9 and i.isalnum() for i in ids)
    assert adapt.short_id("abcDEF123") == "abcDEF123"  # already valid: kept
    assert adapt.short_id("call_1") == adapt.short_id("call_1") != adapt.short_id("call_2")


def test_assistant_between_tool_results_and_user() -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "assistant", "content": None, "tool_calls": [_call("c", "sleep 9")]},
        {"role": "user", "content": "carry on"},
    ]
    before = {"messages": normalize(messages)}
    after = adapt.apply(["assistant-between"], before)
    roles = [m["role"] for m in after["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert INTERRUPTED in texts(after) and "carry on" in texts(after)


def test_tools_in_prompt_round_trips_through_the_text_extractor() -> None:
    after = adapt.apply(["tools-in-prompt"], body())
    assert "tools" not in after
    assert [m["role"] for m in after["messages"]] == ["system", "user", "assistant", "user"]
    assert "Run a shell command" in after["messages"][0]["content"]
    assert "be brief" in after["messages"][0]["content"]
    assert_kept(body(), after)
    assert "out-b" in after["messages"][3]["content"] and "next" in after["messages"][3]["content"]
    # The history's calls are written in the very format the extractor recovers.
    extractor = TextCallExtractor(tool_parameters(TOOLS))
    extractor.feed(after["messages"][2]["content"])
    extractor.finish()
    assert [json.loads(c["function"]["arguments"]) for c in extractor.calls] == [
        {"command": "echo a"},
        {"command": "echo b"},
    ]


def test_system_in_user_after_tools_in_prompt() -> None:
    after = adapt.apply(["system-in-user", "tools-in-prompt"], body())
    assert after["messages"][0]["role"] == "user"
    first = after["messages"][0]["content"]
    assert first.startswith("be brief") and "Run a shell command" in first and "do it" in first
    assert all(m["role"] != "system" for m in after["messages"])
