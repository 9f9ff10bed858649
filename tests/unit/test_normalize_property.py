"""normalize() over random histories: every result passes the strict validator (DESIGN §3, §9).

The histories mix everything real sessions produce: interrupted tool calls, duplicate, orphan and
late results, system notes mid-history, developer messages, empty assistant turns, consecutive
users, text-part content, missing, empty and repeated call ids, dict and broken arguments.
The validator comes from stubs/, written separately from normalize, so one's bug cannot hide
in the other.
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from nexpy.messages import INTERRUPTED, normalize, text_of
from stubs.strict import validate

# A tiny id pool so calls and results collide often: duplicates, orphans, reused ids, late
# results. None and "" are the missing ids models send.
IDS = st.sampled_from(["a", "b", "c", "call_3_0", "", None])
# Short texts with separators and blanks, so merges and blank checks get exercised.
TEXT = st.text(alphabet="xy \n", max_size=6)
CONTENT = TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), max_size=2)


@st.composite
def tool_calls(draw: st.DrawFn) -> dict:
    """One tool call; sometimes without an id, a name, or with non-string arguments."""
    call: dict = {
        "type": "function",
        "function": {
            # An empty name is a call nobody could run: normalize drops it with its result.
            "name": draw(st.sampled_from(["read", "write", ""])),
            "arguments": draw(st.sampled_from(['{"p": 1}', "{}", "{bad", None, {"p": "é"}])),
        },
    }
    call_id = draw(IDS)
    if call_id is not None:
        call["id"] = call_id
    return call


def _assistant(content: object, calls: list[dict] | None) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return message


def _tool(call_id: str | None, content: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content, "name": "read"}


MESSAGE = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, CONTENT),
    st.builds(lambda c: {"role": "user", "content": c}, CONTENT),
    st.builds(lambda t: {"role": "system", "content": t}, TEXT),
    st.builds(lambda t: {"role": "developer", "content": t}, TEXT),
    # Plain assistant turns, including empty ones and an empty tool_calls list.
    st.builds(_assistant, st.none() | CONTENT, st.none() | st.just([])),
    # Assistant turns with calls; their results may be missing, late, duplicated or orphaned.
    st.builds(_assistant, st.none() | TEXT, st.lists(tool_calls(), min_size=1, max_size=3)),
    st.builds(_assistant, st.none() | TEXT, st.lists(tool_calls(), min_size=1, max_size=3)),
    st.builds(_tool, IDS, TEXT),
    st.builds(_tool, IDS, TEXT),
    st.builds(_tool, IDS, TEXT),
)
HISTORY = st.lists(MESSAGE, max_size=14)
REMINDERS = st.lists(st.sampled_from(["", "warn", "ctx 90%"]), max_size=2)


@settings(max_examples=10_000, deadline=None)
@given(history=HISTORY, reminders=REMINDERS)
def test_normalize_invariants(history: list[dict], reminders: list[str]) -> None:
    before = copy.deepcopy(history)
    out = normalize(history, reminders=reminders)

    # (a) A strict chat template accepts it.
    assert validate(out) is None, (validate(out), out)
    # (b) Idempotent, with and without reminders (they are folded once, by the first call).
    assert normalize(out) == out
    plain = normalize(history)
    assert normalize(plain) == plain
    # (c) No user text lost.
    outputs = [text_of(m) for m in out if m["role"] == "user"]
    for message in history:
        if message["role"] == "user":
            text = text_of(message)
            assert any(text in o for o in outputs), (text, outputs)
    # Reminders land in the last user turn.
    assert all(r in outputs[-1] for r in reminders)
    # (d) Input not mutated.
    assert history == before


@st.composite
def late_results(draw: st.DrawFn) -> list[dict]:
    """Histories with unique call ids whose results come late, twice, or never."""
    history: list[dict] = []
    ids: list[str] = []
    for op in draw(st.lists(st.sampled_from(["user", "calls", "result", "result"]), max_size=16)):
        if op == "user":
            history.append({"role": "user", "content": draw(TEXT)})
        elif op == "calls":
            new = [f"t{len(ids) + k}" for k in range(draw(st.integers(1, 2)))]
            ids += new
            calls = [
                {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                for i in new
            ]
            history.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif ids:
            call_id = draw(st.sampled_from(ids))
            history.append({"role": "tool", "tool_call_id": call_id, "content": f"r{len(history)}"})
    return history


@settings(max_examples=2_000, deadline=None)
@given(history=late_results())
def test_existing_results_are_moved_not_replaced(history: list[dict]) -> None:
    # The first result journaled for a call answers it, wherever it was journaled.
    expected: dict[str, str] = {}
    for message in history:
        if message["role"] == "tool":
            expected.setdefault(message["tool_call_id"], message["content"])
    out = normalize(history)
    assert validate(out) is None
    answered = {m["tool_call_id"]: m["content"] for m in out if m["role"] == "tool"}
    for call_id, content in answered.items():
        assert content == expected.get(call_id, INTERRUPTED), (call_id, history, out)
