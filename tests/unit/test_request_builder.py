"""The incremental request builder: what `normalize` gives, for work in proportion to the new."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nexpy.messages as messages_module
from nexpy.budget import TokenCounter
from nexpy.messages import RequestBuilder, assistant, normalize, system, tool_result, user
from stubs.strict import validate
from tests.unit.test_normalize_property import MESSAGE

# -- the incremental request builder ----------------------------------------------------------


def _canonical(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with call ids replaced by (message, position): ids a fresh-id rename may pick
    differently when a segment is normalized apart, but what answers what must be the same."""
    out: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            ids = {c["id"]: f"#{len(out)}.{k}" for k, c in enumerate(message["tool_calls"])}
            message["tool_calls"] = [{**c, "id": ids[c["id"]]} for c in message["tool_calls"]]
        elif message["role"] == "tool":
            message["tool_call_id"] = ids[message["tool_call_id"]]
        out.append(message)
    return out


@settings(max_examples=3000, deadline=None)
@given(
    history=st.lists(MESSAGE, max_size=16),
    cuts=st.lists(st.integers(min_value=1, max_value=4), max_size=8),
)
def test_builder_matches_normalize_on_any_growing_history(
    history: list[dict], cuts: list[int]
) -> None:
    """Built piece by piece, the request is what one full normalize pass gives, and counts the
    same; late results, system notes and merges across a settled edge included."""
    counter = TokenCounter()
    builder = RequestBuilder(counter)
    grown: list[dict] = []
    steps = [*cuts, len(history)]
    at = 0
    for step in steps:
        grown.extend(history[at : at + step])
        at += step
        request, raw = builder.build("S", grown)
        full = normalize([system("S"), *grown])
        assert validate(request) is None
        assert _canonical(request) == _canonical(full)
        assert raw == counter.messages(full)
        if at >= len(history):
            break


def _agent_turn(n: int, calls: int = 1) -> list[dict]:
    ids = [f"call_{k}" for k in range(calls)]  # reused every turn, as llama.cpp does
    wire = [
        {
            "id": i,
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"n": n})},
        }
        for i in ids
    ]
    return [assistant(f"step {n}", wire), *(tool_result(i, f"out {n} " * 30, "bash") for i in ids)]


def test_builder_work_per_turn_stays_flat_as_the_history_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    real = messages_module.normalize

    def counting(messages: list[dict], **kw: Any) -> list[dict]:
        seen.append(len(messages))
        return real(messages, **kw)

    monkeypatch.setattr(messages_module, "normalize", counting)
    builder = RequestBuilder(TokenCounter())
    history: list[dict] = [user("the task")]
    for n in range(400):
        history.extend(_agent_turn(n, calls=1 + n % 3))
        if n % 25 == 0:
            history.append(user(f"and now part {n}"))
        seen.clear()
        request, _ = builder.build("S", history)
    # The last build normalized only the newest turns, not ~1,300 messages.
    assert sum(seen) < 20, seen
    assert _canonical(request) == _canonical(real([system("S"), *history]))


def test_builder_starts_over_when_the_history_is_replaced_or_cut() -> None:
    counter = TokenCounter()
    builder = RequestBuilder(counter)
    history: list[dict] = [user("task")]
    for n in range(10):
        history.extend(_agent_turn(n))
    builder.build("S", history)
    compacted = [history[0], assistant("[summary]"), *history[-2:]]
    request, raw = builder.build("S", compacted)
    assert request == normalize([system("S"), *compacted])
    assert raw == counter.messages(request)
    history.clear()  # the REPL's /clear empties the list in place
    history.append(user("fresh"))
    request, _ = builder.build("S", history)
    assert [m["content"] for m in request] == ["S", "fresh"]
