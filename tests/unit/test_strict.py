"""The strict validator: what a strict chat template accepts, and why it refuses the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubs.strict import validate


def sys_(text: str = "be brief") -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def asst(text: str | None = "hello") -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def call(cid: str, name: str = "bash", args: Any = None) -> dict[str, Any]:
    arguments = json.dumps(args if args is not None else {"command": "ls"})
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def asst_calls(*ids: str, content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [call(i) for i in ids]}


def tool(cid: str, text: str = "ok") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": cid, "content": text}


# ---------------------------------------------------------------------------------------------
# Accepted.

ACCEPTED = {
    "single user": [user()],
    "system then user": [sys_(), user()],
    "alternating": [sys_(), user(), asst(), user()],
    "long alternation": [user(), asst(), user(), asst(), user()],
    "one tool round": [user(), asst_calls("a"), tool("a")],
    "tool round then answer then user": [user(), asst_calls("a"), tool("a"), asst(), user()],
    "two calls answered in order": [user(), asst_calls("a", "b"), tool("a"), tool("b")],
    "two calls answered out of order": [user(), asst_calls("a", "b"), tool("b"), tool("a")],
    "tool round straight into another": [
        user(),
        asst_calls("a"),
        tool("a"),
        asst_calls("b"),
        tool("b"),
    ],
    "tool round then user": [user(), asst_calls("a"), tool("a"), user()],
    "assistant with text and calls": [user(), asst_calls("a", content="let me look"), tool("a")],
    "assistant calls with empty-string content": [user(), asst_calls("a", content=""), tool("a")],
    "text parts": [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]},
        {"role": "user", "content": "y"},
    ],
    "tool content as parts": [
        user(),
        asst_calls("a"),
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "out"}]},
    ],
    "empty user text": [user("")],
    "whitespace assistant": [user(), asst(" "), user()],
    "extra keys ignored": [
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": "yo", "reasoning_content": "hmm"},
        {"role": "user", "content": "ok"},
    ],
    "explicit tool_calls None": [
        user(),
        {"role": "assistant", "content": "x", "tool_calls": None},
        user(),
    ],
    "call without type key": [
        user(),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}],
        },
        tool("a"),
    ],
}


@pytest.mark.parametrize("messages", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepts(messages: list[dict[str, Any]]) -> None:
    assert validate(messages) is None


# ---------------------------------------------------------------------------------------------
# Rejected: (messages, a fragment the reason must contain).

REJECTED = {
    "not a list": ("hello", "expected a list"),
    "none": (None, "expected a list"),
    "empty": ([], "empty"),
    "not an object": ([user(), "hi"], "messages[1] is str"),
    "missing role": ([{"content": "hi"}], "no role"),
    "unknown role": ([{"role": "developer", "content": "hi"}], "unknown role 'developer'"),
    "function role": ([user(), {"role": "function", "content": "x"}], "unknown role"),
    "system only": ([sys_()], "no user message"),
    "system second": ([user(), sys_()], "messages[1]: system message is only allowed first"),
    "system later": ([user(), asst(), sys_(), user()], "system message is only allowed first"),
    "two systems": ([sys_(), sys_(), user()], "more than one system"),
    "two systems apart": ([sys_(), user(), asst(), sys_(), user()], "more than one system"),
    "assistant first": ([asst(), user()], "first non-system message must be user"),
    "assistant after system": ([sys_(), asst(), user()], "first non-system message must be user"),
    "tool first": ([tool("a"), user()], "first non-system message must be user"),
    "two users": ([user(), user()], "messages[1]: two consecutive user messages"),
    "two users later": ([user(), asst(), user(), user()], "messages[3]: two consecutive user"),
    "two assistants": ([user(), asst(), asst(), user()], "two consecutive assistant"),
    "ends with assistant": ([user(), asst()], "last message is from the assistant"),
    "ends with system-user-assistant": ([sys_(), user(), asst()], "last message"),
    "assistant None no calls": ([user(), asst(None), user()], "no content and no tool_calls"),
    "assistant empty no calls": ([user(), asst(""), user()], "empty content and no tool_calls"),
    "assistant empty parts": (
        [user(), {"role": "assistant", "content": []}, user()],
        "empty content",
    ),
    "user None": ([{"role": "user", "content": None}], "user message has no content"),
    "user missing content": ([{"role": "user"}], "user message has no content"),
    "system None": ([{"role": "system", "content": None}, user()], "system message has no content"),
    "content int": ([{"role": "user", "content": 3}], "content is int"),
    "content dict": ([{"role": "user", "content": {"text": "x"}}], "content is dict"),
    "image part": (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        "only 'text'",
    ),
    "part without text": ([{"role": "user", "content": [{"type": "text"}]}], "no string 'text'"),
    "part not object": ([{"role": "user", "content": ["hi"]}], "not an object"),
    "tool None content": (
        [user(), asst_calls("a"), {"role": "tool", "tool_call_id": "a", "content": None}],
        "tool message has no content",
    ),
    "tool without id": (
        [user(), asst_calls("a"), {"role": "tool", "content": "x"}],
        "no tool_call_id",
    ),
    "tool after user": ([user(), asst(), user(), tool("a")], "does not follow an assistant"),
    "tool after plain assistant": (
        [user(), asst(), tool("a")],
        "does not follow an assistant message with tool_calls",
    ),
    "tool wrong id": ([user(), asst_calls("a"), tool("b")], "'b' answers no tool call"),
    "tool id answered twice": (
        [user(), asst_calls("a", "b"), tool("a"), tool("a"), tool("b")],
        "answered twice",
    ),
    "tool answers an older call": (
        [user(), asst_calls("a"), tool("a"), asst_calls("b"), tool("a"), tool("b")],
        "answers no tool call of messages[3]",
    ),
    "unanswered at end": ([user(), asst_calls("a")], "messages[1]: tool call id(s) a never"),
    "partly answered at end": (
        [user(), asst_calls("a", "b"), tool("a")],
        "tool call id(s) b never answered",
    ),
    "unanswered before user": (
        [user(), asst_calls("a"), user()],
        "messages[1]: tool call id(s) a not answered before messages[2] (user)",
    ),
    "partly answered before assistant": (
        [user(), asst_calls("a", "b"), tool("b"), asst(), user()],
        "id(s) a not answered before messages[3]",
    ),
    "calls then assistant": ([user(), asst_calls("a"), asst(), user()], "not answered"),
    "tool message after a later user": (
        [user(), asst_calls("a"), tool("a"), user(), tool("a")],
        "does not follow",
    ),
    "empty tool_calls": (
        [user(), {"role": "assistant", "content": "x", "tool_calls": []}, user()],
        "empty list",
    ),
    "tool_calls not list": (
        [user(), {"role": "assistant", "content": None, "tool_calls": {"id": "a"}}],
        "tool_calls is dict",
    ),
    "call without id": (
        [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
        ],
        "tool_calls[0] has no id",
    ),
    "call duplicate id": (
        [user(), asst_calls("a", "a"), tool("a")],
        "tool_calls[1] repeats id 'a'",
    ),
    "call bad type": (
        [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "code", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            tool("a"),
        ],
        "expected 'function'",
    ),
    "call without function": (
        [user(), {"role": "assistant", "content": None, "tool_calls": [{"id": "a"}]}, tool("a")],
        "no function object",
    ),
    "call without name": (
        [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "function": {"arguments": "{}"}}],
            },
            tool("a"),
        ],
        "no function name",
    ),
    "call arguments dict": (
        [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
            tool("a"),
        ],
        "arguments is dict",
    ),
    "call arguments not JSON": (
        [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{oops"}}],
            },
            tool("a"),
        ],
        "not valid JSON",
    ),
    "assistant calls content int": (
        [user(), {"role": "assistant", "content": 5, "tool_calls": [call("a")]}, tool("a")],
        "content is int",
    ),
}


@pytest.mark.parametrize(("messages", "fragment"), list(REJECTED.values()), ids=list(REJECTED))
def test_rejects(messages: Any, fragment: str) -> None:
    reason = validate(messages)
    assert reason is not None, "expected a rejection"
    assert fragment in reason
    assert "\n" not in reason


def test_does_not_mutate_input() -> None:
    msgs = [sys_(), user(), asst_calls("a", "b"), tool("b"), tool("a"), user()]
    before = json.dumps(msgs, sort_keys=True)
    assert validate(msgs) is None
    assert json.dumps(msgs, sort_keys=True) == before


# ---------------------------------------------------------------------------------------------
# Properties: conversations built by the rules pass; breaking any rule fails.

_text = st.text(min_size=1, max_size=8)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        msgs.append(sys_(draw(_text)))
    counter = 0
    for _ in range(draw(st.integers(1, 6))):
        msgs.append(user(draw(_text)))
        # the assistant's turn: zero or more tool rounds, then maybe a text answer
        for _ in range(draw(st.integers(0, 3))):
            n = draw(st.integers(1, 3))
            ids = [f"c{counter + k}" for k in range(n)]
            counter += n
            msgs.append(asst_calls(*ids, content=draw(st.one_of(st.none(), _text))))
            for cid in draw(st.permutations(ids)):
                msgs.append(tool(cid, draw(_text)))
        # after a tool round the text answer is optional; after a bare user turn it is not
        if msgs[-1]["role"] != "tool" or draw(st.booleans()):
            msgs.append(asst(draw(_text)))
    if msgs[-1]["role"] == "assistant":
        msgs.append(user(draw(_text)))
    return msgs


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_generated_conversations_pass(msgs: list[dict[str, Any]]) -> None:
    assert validate(msgs) is None


@settings(max_examples=200, deadline=None)
@given(conversations(), st.data())
def test_dropping_a_tool_message_fails(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    tool_idx = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    if not tool_idx:
        return
    i = data.draw(st.sampled_from(tool_idx))
    assert validate(msgs[:i] + msgs[i + 1 :]) is not None


@settings(max_examples=200, deadline=None)
@given(conversations(), st.data())
def test_duplicating_a_message_fails(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    # Repeating any user/assistant message (in place) breaks alternation; a tool message
    # repeated answers its id twice; a system message repeated is a second system.
    i = data.draw(st.integers(0, len(msgs) - 1))
    assert validate([*msgs[: i + 1], msgs[i], *msgs[i + 1 :]]) is not None


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_ending_with_assistant_fails(msgs: list[dict[str, Any]]) -> None:
    assert "last message" in (validate([*msgs, asst("final")]) or "")
