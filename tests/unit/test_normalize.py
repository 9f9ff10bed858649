"""normalize(): one named test per wire invariant (DESIGN §3), with concrete inputs and outputs."""

from __future__ import annotations

import copy
import json

import pytest

from nexpy.messages import (
    CONTINUE,
    CONVERSATION_CONTINUES,
    DEFAULT_SYSTEM,
    INTERRUPTED,
    assistant,
    normalize,
    system,
    text_of,
    tool_result,
    user,
)
from stubs.strict import validate

SYS = system("sys")


def call(call_id: str | None, name: str = "read", arguments: object = "{}") -> dict:
    """One tool call as a model returns it."""
    c: dict = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        c["id"] = call_id
    return c


def check(history: list[dict], expected: list[dict], **kwargs: object) -> None:
    """normalize gives ``expected``, a strict template accepts it, and it is a fixed point."""
    out = normalize(history, **kwargs)  # type: ignore[arg-type]
    assert out == expected
    assert validate(out) is None
    assert normalize(out) == out


# -- constructors and text_of ----------------------------------------------------------------
def test_constructors() -> None:
    assert user("u") == {"role": "user", "content": "u"}
    assert system("s") == {"role": "system", "content": "s"}
    assert assistant("a") == {"role": "assistant", "content": "a"}
    assert assistant(None, [call("x")]) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [call("x")],
    }
    assert tool_result("x", "r") == {"role": "tool", "tool_call_id": "x", "content": "r"}
    assert tool_result("x", "r", name="read")["name"] == "read"


def test_text_of_joins_parts_and_maps_none_to_empty() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]
    parts.append({"type": "text", "text": "b"})
    assert text_of({"role": "user", "content": parts}) == "ab"
    assert text_of(assistant(None, [call("x")])) == ""
    assert text_of(user("plain")) == "plain"


# -- rule 1: one system message, first -------------------------------------------------------
def test_default_system_is_inserted() -> None:
    check([user("hi")], [system(DEFAULT_SYSTEM), user("hi")])


def test_system_note_mid_history_joins_the_first_system() -> None:
    history = [SYS, user("a"), system("note"), assistant("b"), user("c")]
    check(history, [system("sys\n\nnote"), user("a"), assistant("b"), user("c")])


def test_developer_is_system() -> None:
    history = [
        {"role": "developer", "content": "dev"},
        user("a"),
        {"role": "developer", "content": "x"},
    ]
    check(history, [system("dev\n\nx"), user("a")])


def test_system_not_first_moves_first() -> None:
    check([user("a"), system("late")], [system("late"), user("a")])


# -- rule 2: a user turn first ---------------------------------------------------------------
def test_history_starting_with_assistant_gets_a_user_turn() -> None:
    history = [SYS, assistant("hello"), user("a")]
    check(history, [SYS, user(CONVERSATION_CONTINUES), assistant("hello"), user("a")])


def test_empty_history_becomes_system_and_placeholder() -> None:
    check([], [system(DEFAULT_SYSTEM), user(CONVERSATION_CONTINUES)])


def test_history_starting_with_tool_call() -> None:
    history = [assistant(None, [call("x")]), tool_result("x", "r")]
    check(
        history,
        [system(DEFAULT_SYSTEM), user(CONVERSATION_CONTINUES), *history],
    )


# -- rule 3: no two user or assistant messages in a row --------------------------------------
def test_consecutive_users_merge() -> None:
    parts = [{"type": "text", "text": "b1"}, {"type": "text", "text": "b2"}]
    history = [SYS, user("a"), {"role": "user", "content": parts}, user("c")]
    check(history, [SYS, user("a\n\nb1b2\n\nc")])


def test_consecutive_plain_assistants_merge() -> None:
    history = [SYS, user("u"), assistant("a"), assistant("b"), user("v")]
    check(history, [SYS, user("u"), assistant("a\n\nb"), user("v")])


def test_plain_then_tool_call_assistant_merge() -> None:
    history = [
        SYS,
        user("u"),
        assistant("thinking"),
        assistant("calling", [call("x")]),
        tool_result("x", "r"),
    ]
    check(
        history,
        [SYS, user("u"), assistant("thinking\n\ncalling", [call("x")]), tool_result("x", "r")],
    )


def test_merge_keeps_extra_keys() -> None:
    first = {"role": "assistant", "content": "a", "reasoning_content": "why"}
    second = {"role": "assistant", "content": "b", "extra": 1}
    out = normalize([SYS, user("u"), first, second, user("v")])
    assert out[2] == {
        "role": "assistant",
        "content": "a\n\nb",
        "reasoning_content": "why",
        "extra": 1,
    }


def test_users_separated_only_by_dropped_messages_merge() -> None:
    history = [SYS, user("a"), assistant(" "), tool_result("orphan", "r"), user("b")]
    check(history, [SYS, user("a\n\nb")])


# -- rule 4: every tool call answered at once ------------------------------------------------
def test_interrupted_tool_call_gets_synthesized_result() -> None:
    history = [SYS, user("u"), assistant(None, [call("x"), call("y")]), tool_result("x", "r")]
    check(
        history,
        [
            SYS,
            user("u"),
            assistant(None, [call("x"), call("y")]),
            tool_result("x", "r"),
            tool_result("y", INTERRUPTED),
        ],
    )


def test_results_follow_in_call_order() -> None:
    history = [
        SYS,
        user("u"),
        assistant(None, [call("x"), call("y")]),
        tool_result("y", "ry"),
        tool_result("x", "rx"),
    ]
    check(
        history,
        [
            SYS,
            user("u"),
            assistant(None, [call("x"), call("y")]),
            tool_result("x", "rx"),
            tool_result("y", "ry"),
        ],
    )


def test_duplicate_and_orphan_results_are_dropped() -> None:
    history = [
        SYS,
        tool_result("before", "orphan before any call"),
        user("u"),
        tool_result("x", "too early: its call comes later"),
        assistant(None, [call("x")]),
        tool_result("x", "first"),
        tool_result("x", "duplicate"),
        tool_result("nobody", "orphan"),
        user("v"),
    ]
    check(
        history,
        [SYS, user("u"), assistant(None, [call("x")]), tool_result("x", "first"), user("v")],
    )


def test_late_result_is_moved_into_place() -> None:
    # The user interjected while the tool ran; the result was journaled after the interjection.
    history = [
        SYS,
        user("u"),
        assistant(None, [call("x")]),
        user("stop, wait"),
        assistant("ok"),
        tool_result("x", "late", name="read"),
        user("v"),
    ]
    check(
        history,
        [
            SYS,
            user("u"),
            assistant(None, [call("x")]),
            tool_result("x", "late", name="read"),
            user("stop, wait"),
            assistant("ok"),
            user("v"),
        ],
    )


def test_reused_id_across_turns_pairs_with_the_latest_call() -> None:
    # Some servers number calls per response, so every turn says "call_0".
    history = [
        SYS,
        user("u"),
        assistant(None, [call("call_0", "a")]),
        user("v"),
        assistant(None, [call("call_0", "b")]),
        tool_result("call_0", "answer to b"),
    ]
    check(
        history,
        [
            SYS,
            user("u"),
            assistant(None, [call("call_0", "a")]),
            tool_result("call_0", INTERRUPTED),
            user("v"),
            assistant(None, [call("call_0", "b")]),
            tool_result("call_0", "answer to b"),
        ],
    )


def test_duplicate_and_missing_call_ids_get_unique_ids() -> None:
    history = [
        SYS,
        user("u"),
        assistant(None, [call("x"), call("x", "write"), call(None), call("")]),
        tool_result("x", "r1"),
        tool_result("x", "r2"),
    ]
    out = normalize(history)
    ids = [c["id"] for c in out[2]["tool_calls"]]
    assert ids == ["x", "call_2_1", "call_2_2", "call_2_3"]
    # Results for a repeated id answer its calls in order, under the new ids.
    assert out[3:] == [
        tool_result("x", "r1"),
        tool_result("call_2_1", "r2"),
        tool_result("call_2_2", INTERRUPTED),
        tool_result("call_2_3", INTERRUPTED),
    ]
    assert validate(out) is None
    assert normalize(out) == out


def test_fresh_id_avoids_ids_already_in_the_message() -> None:
    history = [SYS, user("u"), assistant(None, [call(None), call("call_2_0")])]
    out = normalize(history)
    assert [c["id"] for c in out[2]["tool_calls"]] == ["call_2_0_1", "call_2_0"]
    assert validate(out) is None


def test_dict_arguments_are_json_encoded() -> None:
    history = [SYS, user("u"), assistant(None, [call("x", arguments={"path": "é"})])]
    out = normalize(history)
    arguments = out[2]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str)
    assert json.loads(arguments) == {"path": "é"}
    assert validate(out) is None


def test_missing_and_invalid_arguments_become_json() -> None:
    history = [
        SYS,
        user("u"),
        assistant(None, [call("x", arguments=None), call("y", arguments="{")]),
    ]
    out = normalize(history)
    assert out[2]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert json.loads(out[2]["tool_calls"][1]["function"]["arguments"]) == {"invalid_json": "{"}
    assert validate(out) is None


def test_unusable_call_is_dropped_with_its_result() -> None:
    nameless = {"id": "n", "type": "function", "function": {"arguments": "{}"}}
    history = [
        SYS,
        user("u"),
        assistant("text", [call("x"), nameless]),
        tool_result("n", "r"),
        tool_result("x", "rx"),
    ]
    check(history, [SYS, user("u"), assistant("text", [call("x")]), tool_result("x", "rx")])


def test_only_unusable_calls_leave_a_plain_or_no_message() -> None:
    nameless = {"id": "n", "function": {"name": ""}}
    history = [SYS, user("u"), assistant(None, [nameless]), tool_result("n", "r"), user("v")]
    check(history, [SYS, user("u\n\nv")])


def test_no_tool_message_outside_its_call() -> None:
    out = normalize([SYS, tool_result("x", "r"), user("u"), tool_result("y", "r")])
    assert [m["role"] for m in out] == ["system", "user"]


# -- rule 5: ends on user or tool; no empty assistant ----------------------------------------
def test_trailing_assistant_gets_continue() -> None:
    check([SYS, user("u"), assistant("done")], [SYS, user("u"), assistant("done"), user(CONTINUE)])


def test_empty_assistant_turns_are_dropped() -> None:
    history = [
        SYS,
        user("u"),
        assistant(None),
        assistant("  \n"),
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
    ]
    check(history, [SYS, user("u")])


def test_empty_tool_calls_list_is_removed() -> None:
    history = [SYS, user("u"), {"role": "assistant", "content": "a", "tool_calls": []}, user("v")]
    check(history, [SYS, user("u"), assistant("a"), user("v")])


# -- rule 6: reminders fold into the last user turn ------------------------------------------
def test_reminders_fold_into_last_user_message() -> None:
    history = [SYS, user("a"), assistant(None, [call("x")]), tool_result("x", "r")]
    out = normalize(history, reminders=["warn 1", "", "ctx 80%"])
    assert out == [
        SYS,
        user("a\n\nwarn 1\n\nctx 80%"),
        assistant(None, [call("x")]),
        tool_result("x", "r"),
    ]
    assert normalize(out) == out


def test_reminders_go_to_placeholder_without_user_message() -> None:
    out = normalize([assistant(None, [call("x")])], reminders=["note"])
    assert out[1] == user(f"{CONVERSATION_CONTINUES}\n\nnote")
    assert validate(out) is None


def test_reminders_fold_into_continue() -> None:
    out = normalize([SYS, user("u"), assistant("a")], reminders=["note"])
    assert out[-1] == user(f"{CONTINUE}\n\nnote")


# -- rule 7: idempotent, loses no user text, never mutates -----------------------------------
def test_input_is_not_mutated() -> None:
    history = [
        {"role": "developer", "content": "d"},
        user("a"),
        user("b"),
        assistant("t", [call(None, arguments={"k": [1]}), call(None)]),
        tool_result("zzz", "orphan"),
        assistant(None),
        {"role": "user", "content": [{"type": "text", "text": "p"}]},
    ]
    before = copy.deepcopy(history)
    out = normalize(history, reminders=["r"])
    assert history == before
    # Nothing in the output is shared with the input either: editing it leaves the input alone.
    out[2]["tool_calls"][0]["function"]["name"] = "changed"
    out[-1]["content"] = "changed"
    assert history == before


def test_output_shares_nothing_mutable_with_input() -> None:
    parts = [{"type": "text", "text": "p"}]
    history = [SYS, {"role": "user", "content": parts}, assistant(None, [call("x")])]
    out = normalize(history)
    out[1]["content"][0]["text"] = "changed"
    out[2]["tool_calls"][0]["function"]["name"] = "changed"
    assert parts[0]["text"] == "p"
    assert history[2]["tool_calls"][0]["function"]["name"] == "read"


def test_idempotent_with_reminders() -> None:
    history = [user("a"), assistant("b"), system("late"), assistant(None, [call(None)])]
    once = normalize(history, reminders=["r"])
    assert normalize(once) == once


def test_unknown_role_raises() -> None:
    with pytest.raises(ValueError, match="unknown role 'function'"):
        normalize([user("u"), {"role": "function", "content": "x"}])
    with pytest.raises(ValueError, match="not a dict"):
        normalize(["hello"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"messages\[0\]: content is int"):
        normalize([{"role": "user", "content": 3}])


def test_linear_on_long_histories() -> None:
    # 1000 turns, each a call with its result, plus late results at the end: must stay fast.
    history: list[dict] = [SYS]
    for i in range(1000):
        history += [user(f"u{i}"), assistant(None, [call(f"c{i}")])]
        if i % 2:
            history.append(tool_result(f"c{i}", "r"))
    history += [tool_result(f"c{i}", "late") for i in range(0, 1000, 2)]
    out = normalize(history)
    assert validate(out) is None
    assert len(out) == 1 + 3 * 1000
    assert all(m["content"] != INTERRUPTED for m in out if m["role"] == "tool")


@pytest.mark.parametrize("content", ["missing", None])
def test_tool_call_only_assistant_is_sent_with_empty_content(content: str | None) -> None:
    """Seven real templates (Qwen3, QwQ, R1 distills, granite 3.3, Phi-3.5, Devstral) read
    message.content unguarded: a tool-call-only message goes out with "content": ""."""
    calling: dict = {"role": "assistant", "tool_calls": [call("c1")]}
    if content != "missing":
        calling["content"] = content
    out = normalize([SYS, user("go"), calling, tool_result("c1", "ok")])
    assert out[2] == {"role": "assistant", "content": "", "tool_calls": [call("c1")]}
    assert normalize(out) == out
