"""Tool calls from imperfect models: text formats (whole and streamed), delta assembly, and
argument repair."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from nexpy.toolcalls import (
    TextCallExtractor,
    ToolCallAssembler,
    parse_arguments,
    tool_parameters,
)

TOOLS = tool_parameters(
    [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}},
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "write_file",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "content": {"type": "string"},
                        "append": {"type": "boolean"},
                        "meta": {"type": "object"},
                    },
                },
            },
        },
    ]
)

QWEN_XML = (
    "<tool_call>\n<function=bash>\n<parameter=command>\nls -la src\n</parameter>\n"
    "<parameter=timeout>\n30\n</parameter>\n</function>\n</tool_call>"
)
HERMES = (
    '<tool_call>\n{"name": "bash", "arguments": {"command": "ls -la src", "timeout": 30}}\n'
    "</tool_call>"
)
FENCED = '```json\n{"name": "bash", "arguments": {"command": "ls -la src", "timeout": 30}}\n```'
BARE_FUNCTION = (
    "<function=bash>\n<parameter=command>\nls -la src\n</parameter>\n"
    "<parameter=timeout>\n30\n</parameter>\n</function>"
)
FORMATS = {
    "qwen3-coder xml": QWEN_XML,
    "hermes": HERMES,
    "fenced json": FENCED,
    "bare xml": BARE_FUNCTION,
}


def recover_calls(text: str, tools: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(visible text, calls) for a complete text fed at once, as a non-streamed reply is."""
    extractor = TextCallExtractor(tools)
    shown = extractor.feed(text) + extractor.finish()
    assert shown == extractor.visible
    return extractor.visible, extractor.calls


def _streamed(text: str, sizes: list[int]) -> tuple[str, str, list[dict[str, Any]]]:
    """Feed `text` in pieces of the given sizes: (what was shown, visible, calls)."""
    extractor = TextCallExtractor(TOOLS)
    shown: list[str] = []
    pos = 0
    for size in sizes:
        shown.append(extractor.feed(text[pos : pos + size]))
        pos += size
    shown.append(extractor.feed(text[pos:]))
    shown.append(extractor.finish())
    return "".join(shown), extractor.visible, extractor.calls


def _args(call: dict[str, Any]) -> dict[str, Any]:
    return json.loads(call["function"]["arguments"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_text_call_recovered_whole(fmt: str) -> None:
    text = f"Let me look at the sources.\n{FORMATS[fmt]}"
    visible, calls = recover_calls(text, TOOLS)
    assert visible == "Let me look at the sources.\n"
    assert [c["function"]["name"] for c in calls] == ["bash"]
    assert _args(calls[0]) == {"command": "ls -la src", "timeout": 30}
    assert calls[0]["id"].startswith("call_")


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("seed", range(5))
def test_text_call_recovered_streamed_and_never_shown(fmt: str, seed: int) -> None:
    text = f"Checking.\n{FORMATS[fmt]}\nDone."
    rng = random.Random(seed)
    sizes = [rng.randint(1, 7) for _ in range(len(text))]
    shown, visible, calls = _streamed(text, sizes)
    assert shown == visible == "Checking.\n\nDone."
    assert "tool_call" not in shown and "function" not in shown and "{" not in shown
    assert len(calls) == 1 and _args(calls[0]) == {"command": "ls -la src", "timeout": 30}


def test_text_streams_at_once_when_it_cannot_be_a_call() -> None:
    extractor = TextCallExtractor(TOOLS)
    assert extractor.feed("Hello, ") == "Hello, "
    assert extractor.feed("world <") == "world "  # "<" may open a call: held
    assert extractor.feed("b> is bold") == "<b> is bold"
    assert extractor.feed(" and `x` is code") == " and `x` is code"
    assert extractor.finish() == ""


def test_a_code_block_in_another_language_is_released_at_its_opening_line() -> None:
    extractor = TextCallExtractor(TOOLS)
    assert extractor.feed("Run this:\n```py") == "Run this:\n"
    assert extractor.feed("thon\nprint(1)\n") == "```python\nprint(1)\n"


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "rm_rf", "arguments": {"path": "/"}}</tool_call>',
        "<tool_call><function=rm_rf><parameter=path>/</parameter></function></tool_call>",
        '```json\n{"name": "rm_rf", "arguments": {}}\n```',
        '```json\n{"name": "bash", "version": 5, "license": "GPL"}\n```',
        '```json\n{"config": {"name": "bash"}}\n```',
        "Use <function=bash> to run things.",
    ],
)
def test_unknown_names_and_plain_json_stay_text(text: str) -> None:
    visible, calls = recover_calls(text, TOOLS)
    assert calls == []
    assert visible == text
    shown, visible_streamed, calls_streamed = _streamed(text, [3] * len(text))
    assert (shown, visible_streamed, calls_streamed) == (text, text, [])


def test_several_calls_in_one_answer_keep_their_order() -> None:
    text = (
        '<tool_call>{"name": "write_file", "arguments": {"path": "a.txt", "content": "x"}}'
        "</tool_call>\n<tool_call>\n<function=bash>\n<parameter=command>\ncat a.txt\n"
        "</parameter>\n</function>\n</tool_call>"
    )
    visible, calls = recover_calls(text, TOOLS)
    assert visible == "\n"
    assert [c["function"]["name"] for c in calls] == ["write_file", "bash"]
    assert len({c["id"] for c in calls}) == 2


def test_xml_values_follow_the_schema_types() -> None:
    text = (
        "<tool_call><function=write_file>\n<parameter=path>\nnotes.md\n</parameter>\n"
        "<parameter=content>\n# Title\n\n  indented\n</parameter>\n<parameter=append>\ntrue\n"
        '</parameter>\n<parameter=meta>\n{"k": [1, 2]}\n</parameter>\n</function></tool_call>'
    )
    _, calls = recover_calls(text, TOOLS)
    assert _args(calls[0]) == {
        "path": "notes.md",
        "content": "# Title\n\n  indented",
        "append": True,
        "meta": {"k": [1, 2]},
    }


def test_a_call_cut_off_before_its_closing_tag_is_still_a_call() -> None:
    # Models stop at their end-of-turn token, often before writing </tool_call>.
    text = '<tool_call>\n{"name": "bash", "arguments": {"command": "pwd"}}'
    shown, visible, calls = _streamed(text, [4] * 20)
    assert shown == visible == ""
    assert _args(calls[0]) == {"command": "pwd"}


def test_hermes_call_with_broken_arguments_goes_to_the_tool_as_an_error() -> None:
    text = '<tool_call>{"name": "bash", "arguments": {"command": "ls" "-la"}}</tool_call>'
    visible, calls = recover_calls(text, TOOLS)
    assert visible == "" and calls[0]["function"]["name"] == "bash"
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_arguments(calls[0]["function"]["arguments"])


def test_hermes_arguments_as_a_string_and_openai_shape() -> None:
    text = (
        '<tool_call>{"type": "function", "function": {"name": "bash", '
        '"arguments": "{\\"command\\": \\"id\\"}"}}</tool_call>'
    )
    _, calls = recover_calls(text, TOOLS)
    assert _args(calls[0]) == {"command": "id"}


# -- streamed deltas ---------------------------------------------------------------------------
def _delta(
    index: int | None = None,
    id: str | None = None,
    name: str | None = None,
    args: str | None = None,
) -> dict:
    out: dict[str, Any] = {"function": {}}
    if index is not None:
        out["index"] = index
    if id is not None:
        out["id"] = id
    if name is not None:
        out["function"]["name"] = name
    if args is not None:
        out["function"]["arguments"] = args
    return out


def _assemble(deltas: list[dict]) -> list[tuple[str, dict]]:
    asm = ToolCallAssembler()
    for d in deltas:
        asm.add(d)
    calls = asm.finish()
    assert all(c["id"] for c in calls)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_deltas_with_proper_index_and_id() -> None:
    deltas = [
        _delta(0, "a", "bash", ""),
        _delta(0, args='{"command": '),
        _delta(0, args='"ls"}'),
        _delta(1, "b", "bash", '{"command": "pwd"}'),
    ]
    assert _assemble(deltas) == [("bash", {"command": "ls"}), ("bash", {"command": "pwd"})]


def test_deltas_with_always_zero_index_and_no_id() -> None:
    deltas = [
        _delta(0, name="bash", args='{"command"'),
        _delta(0, args=': "ls"}'),
        _delta(0, name="bash", args='{"command": '),
        _delta(0, args='"pwd"}'),
    ]
    assert _assemble(deltas) == [("bash", {"command": "ls"}), ("bash", {"command": "pwd"})]


def test_deltas_with_always_zero_index_but_distinct_ids() -> None:
    deltas = [
        _delta(0, "a", "bash", '{"command": "ls"}'),
        _delta(0, "b", "write_file", '{"path": "x"'),
        _delta(0, args="}"),
    ]
    assert _assemble(deltas) == [("bash", {"command": "ls"}), ("write_file", {"path": "x"})]


def test_deltas_without_index() -> None:
    deltas = [
        _delta(id="a", name="bash", args='{"comm'),
        _delta(args='and": "ls"}'),
        _delta(id="b", name="bash", args='{"command": "pwd"}'),
    ]
    assert _assemble(deltas) == [("bash", {"command": "ls"}), ("bash", {"command": "pwd"})]


def test_deltas_repeating_id_and_name_on_every_chunk() -> None:
    deltas = [_delta(0, "a", "bash", p) for p in ('{"com', 'mand": ', '"ls"}')]
    assert _assemble(deltas) == [("bash", {"command": "ls"})]


def test_a_call_restated_whole_is_kept_once() -> None:
    deltas = [_delta(0, "a", "bash", '{"command": "ls"}'), _delta(0, "a", args='{"command": "ls"}')]
    assert _assemble(deltas) == [("bash", {"command": "ls"})]


def test_arguments_sent_as_an_object() -> None:
    delta = {"index": 0, "function": {"name": "bash", "arguments": {"command": "ls"}}}
    assert _assemble([delta]) == [("bash", {"command": "ls"})]


def test_a_long_call_streamed_token_by_token_takes_linear_time() -> None:
    content = "x" * 400_000
    text = (
        '<tool_call>{"name": "write_file", "arguments": {"path": "big.txt", "content": "'
        + content
        + '"}}</tool_call>'
    )
    started = time.monotonic()
    shown, visible, calls = _streamed(text, [4] * (len(text) // 4))
    assert time.monotonic() - started < 5  # quadratic rescanning took minutes here
    assert (shown, visible) == ("", "")
    assert _args(calls[0])["content"] == content


def test_missing_ids_are_made_up_and_unique_across_replies() -> None:
    ids = set()
    for _ in range(3):
        asm = ToolCallAssembler()
        asm.add(_delta(0, name="bash", args="{}"))
        ids.update(c["id"] for c in asm.finish())
    assert len(ids) == 3


# -- argument repair ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"path": "a.txt"}', {"path": "a.txt"}),
        ('```json\n{"path": "a.txt"}\n```', {"path": "a.txt"}),
        ('```\n{"path": "a.txt"}\n```', {"path": "a.txt"}),
        ('{"path": "a.txt"', {"path": "a.txt"}),
        ('{"a": {"b": [1, {"c": true', {"a": {"b": [1, {"c": True}]}}),
        ('{"path": "a.txt"}}', {"path": "a.txt"}),
        ('"{\\"path\\": \\"a.txt\\"}"', {"path": "a.txt"}),
        ("", {}),
        ("   ", {}),
        (None, {}),
        ({"path": "a"}, {"path": "a"}),
    ],
)
def test_arguments_repaired_when_unambiguous(raw: Any, expected: dict) -> None:
    assert parse_arguments(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"path": "a.tx', "not valid JSON"),  # cut inside a string: the value may be incomplete
        ('{"n": 12', "not valid JSON"),  # cut after a number: it may be incomplete
        ('{"path": "a.txt",', "not valid JSON"),  # cut after a comma: more keys were coming
        ("{'path': 'a.txt'}", "not valid JSON"),
        ('["a.txt"]', "must be a JSON object"),
        ("path=a.txt", "not valid JSON"),
    ],
)
def test_arguments_left_alone_when_ambiguous(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_arguments(raw)


# -- reading litellm's objects -------------------------------------------------------------------


def test_field_of_reads_litellm_objects_exactly_as_getattr_does() -> None:
    """field_of skips pydantic's __getattr__ for litellm's stream objects: every field a reply is
    read by, present, unset, deleted (litellm deletes an unset reasoning_content) or undeclared
    (pydantic's extras), and names the class itself answers (methods, properties, private
    attributes), read the same as getattr(obj, key, None), object by object."""
    from litellm.types.utils import (
        ChatCompletionDeltaToolCall,
        Delta,
        Function,
        Message,
        ModelResponse,
        ModelResponseStream,
        PromptTokensDetailsWrapper,
        StreamingChoices,
        Usage,
    )

    from nexpy.toolcalls import _kind, field_of

    call = ChatCompletionDeltaToolCall(
        id="call_1", index=0, type="function", function=Function(name="bash", arguments="{}")
    )
    usage = Usage(
        prompt_tokens=100,
        completion_tokens=10,
        prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=60),
    )
    objects: list[Any] = [
        Delta(content="hi", role="assistant"),
        Delta(content=None, reasoning_content="thinking"),
        Delta(reasoning="via openrouter"),
        Delta(tool_calls=[call]),
        Delta(content="x", provider_specific_fields={"extra": 1}, surprise="undeclared"),
        call,
        call.function,
        StreamingChoices(delta=Delta(content="a"), finish_reason="stop"),
        ModelResponseStream(choices=[StreamingChoices(delta=Delta(content="a"))]),
        ModelResponseStream(choices=[], usage=usage),
        usage,
        usage.prompt_tokens_details,
        ModelResponse(choices=[{"message": {"role": "assistant", "content": "done"}}]),
        Message(content="done", role="assistant", tool_calls=None),
    ]
    keys = [
        *("usage", "choices", "delta", "message", "content", "reasoning_content", "reasoning"),
        *("tool_calls", "role", "finish_reason", "index", "id", "type", "function", "name"),
        *("arguments", "prompt_tokens", "completion_tokens", "prompt_tokens_details"),
        *("cached_tokens", "surprise", "provider_specific_fields", "thinking_blocks", "audio"),
        *("get", "json", "model_fields", "hidden_params", "_hidden_params", "_response_headers"),
        *("__class__", "mro", "not_there_at_all"),
    ]
    for obj in objects:
        assert _kind(type(obj)) == "pydantic", type(obj)  # the fast path is what is tested
        for key in keys:
            expected = getattr(obj, key, None)
            got = field_of(obj, key)
            if callable(expected):  # a bound method: a new object at each read
                assert callable(got) and got == expected, (type(obj).__name__, key)
            else:
                assert got is expected or got == expected, (type(obj).__name__, key, got)
