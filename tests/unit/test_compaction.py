"""The compaction ladder over random histories: what it keeps, what it may never break."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexpy.budget import TokenCounter
from nexpy.compaction import (
    HANDLE_HEAD,
    HANDLE_OVER,
    handle,
    is_note,
    shrink,
    summary_request,
    with_summary,
)
from nexpy.messages import assistant, normalize, system, text_of, tool_result, user
from nexpy.tools.output import cap
from stubs.strict import validate

COUNTER = TokenCounter()

# Texts from a few chars to several thousand, so some outputs are worth a handle and some not.
TEXT = st.builds(
    lambda word, n: word * n, st.sampled_from(["ab ", "row 7\n", "x=1; "]), st.integers(0, 700)
)
IDS = st.sampled_from(["a", "b", "call_0", "", None])


@st.composite
def calls(draw: st.DrawFn) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        call: dict[str, Any] = {
            "type": "function",
            "function": {
                "name": draw(st.sampled_from(["bash", "read_file", ""])),
                "arguments": "{}",
            },
        }
        if (call_id := draw(IDS)) is not None:
            call["id"] = call_id
        out.append(call)
    return out


MESSAGE = st.one_of(
    st.builds(user, TEXT),
    st.builds(user, TEXT),
    st.builds(assistant, st.none() | TEXT),
    st.builds(assistant, st.none() | TEXT, calls()),
    st.builds(assistant, st.none() | TEXT, calls()),
    st.builds(lambda i, t: tool_result(i, t, "bash"), IDS.map(lambda i: i or "a"), TEXT),
    st.builds(lambda i, t: tool_result(i, t, "bash"), IDS.map(lambda i: i or "a"), TEXT),
    st.builds(lambda i, t: tool_result(i, t, "bash"), IDS.map(lambda i: i or "a"), TEXT),
)


def _tagged(history: list[dict]) -> list[dict]:
    """Each message tagged with its index (compaction carries unknown keys over)."""
    return [{**m, "n": i} for i, m in enumerate(history)]


def _units(history: list[dict]) -> list[list[int]]:
    """Written apart from compaction.units: a tool message belongs to the message before it."""
    out: list[list[int]] = []
    for m in history:
        if m["role"] == "tool" and out:
            out[-1].append(m["n"])
        else:
            out.append([m["n"]])
    return out


@settings(max_examples=1500, deadline=None)
@given(
    history=st.lists(MESSAGE, max_size=25),
    target=st.integers(0, 3000),
    slack=st.integers(0, 3000),
    reserve=st.integers(0, 200),
    summarized=st.booleans(),
)
def test_shrink_keeps_the_invariants(
    history: list[dict], target: int, slack: int, reserve: int, summarized: bool
) -> None:
    history = _tagged(history)
    limit = target + slack
    with tempfile.TemporaryDirectory() as tmp:
        outputs = Path(tmp)
        out = shrink(
            history, COUNTER, target=target, limit=limit, reserve=reserve, outputs_dir=outputs,
            summarized=summarized,
        )  # fmt: skip
        kept = out.history

        # A strict chat template accepts it, once normalized as every request is.
        assert validate(normalize([system("s"), *kept])) is None

        # The task, the latest request and the latest unit stay, untouched.
        users = [m for m in history if m["role"] == "user"]
        if users:
            assert any(m is users[0] for m in kept)
            assert any(m is users[-1] for m in kept)
        if history and history[0]["role"] == "user":
            assert kept[0] is history[0]  # a task that led still leads
        units = _units(history)
        if units:
            head = units[-1][0]
            assert any(m.get("n") == head for m in kept)

        # Units go whole: a call never loses its result, a result never its call.
        present = {m["n"] for m in kept if "n" in m}
        for unit in units:
            assert set(unit) <= present or not set(unit) & present, unit
        if summarized and units:
            # A summary stands for all that may go: only the units that must stay are left.
            must = {units[-1][0]} | {m["n"] for m in (users[:1] + users[-1:])}
            assert {u[0] for u in units if u[0] in present} <= must
        # Order is kept, and the only new message is the note, right after the task.
        order = [m["n"] for m in kept if "n" in m]
        assert order == sorted(order)
        notes = [i for i, m in enumerate(kept) if "n" not in m]
        assert len(notes) <= 1 and all(is_note(kept[i]) for i in notes)
        if notes and users:
            # Right after the task's unit (the task and any stray results after it).
            task_unit = next(u for u in units if users[0]["n"] in u)
            assert kept[notes[0] - 1]["n"] == task_unit[-1]
        assert (out.note is not None) == bool(out.dropped) == bool(notes)

        # The count is right, and over the limit only when nothing more could go.
        assert out.tokens == sum(COUNTER.message(m) for m in kept)
        if out.tokens > limit:
            for m in kept:
                if m["role"] == "tool":
                    text = text_of(m)
                    assert len(text) <= HANDLE_OVER or text.startswith(HANDLE_HEAD)
        # Every handle names a file that holds the whole output.
        originals = {m["n"]: text_of(m) for m in history}
        for m in kept:
            if m["role"] == "tool" and text_of(m).startswith(HANDLE_HEAD):
                name = text_of(m).split("tool-outputs/")[1].split(" ")[0]
                assert (outputs / name).read_text() == originals[m["n"]]


def _session_history(turns: int, output: str = "line of output\n" * 200) -> list[dict]:
    history: list[dict] = [user("THE TASK")]
    for n in range(turns):
        call = {"id": "call_0", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
        history += [assistant(f"step {n}", [call]), tool_result("call_0", output, "bash")]
    return history


def test_cheap_step_first_old_outputs_become_handles(tmp_path: Path) -> None:
    history = _session_history(6)
    total = sum(COUNTER.message(m) for m in history)
    out = shrink(history, COUNTER, target=total // 2, limit=total, outputs_dir=tmp_path)
    assert [s.name for s in out.steps] == ["tool_outputs"]
    assert out.dropped == [] and len(out.history) == len(history)
    # The latest result is untouched; the oldest ones were handled first.
    assert out.history[-1] is history[-1]
    assert text_of(out.history[2]).startswith(HANDLE_HEAD)


def test_turns_are_dropped_only_when_handles_cannot_fit_the_limit(tmp_path: Path) -> None:
    history = _session_history(40)
    out = shrink(history, COUNTER, target=1500, limit=3000, reserve=300, outputs_dir=tmp_path)
    assert [s.name for s in out.steps] == ["tool_outputs", "drop_turns"]
    assert out.history[0] is history[0] and is_note(out.history[1])
    assert out.history[-1] is history[-1]
    # The drop leaves room for the summary and for the next turns.
    assert out.tokens + 300 <= 3000
    assert out.covered == len(out.dropped) == len(history) - len(out.history) + 1


def test_a_summary_replaces_the_note_and_is_summarized_again_later(tmp_path: Path) -> None:
    history = _session_history(30)
    first = shrink(history, COUNTER, target=1000, limit=2000, outputs_dir=tmp_path)
    assert first.note is not None
    summarized = with_summary(first.history, first.note, "Did steps 0-20.", first.covered)
    assert validate(normalize([system("s"), *summarized])) is None
    assert "Did steps 0-20." in text_of(summarized[1])

    later = summarized + _session_history(30)[1:]
    second = shrink(later, COUNTER, target=1000, limit=2000, outputs_dir=tmp_path)
    # The old summary went first, and the new note counts what it stood for.
    assert second.dropped[0] is summarized[1]
    assert second.covered == first.covered + len(second.dropped) - 1
    request = summary_request(second.dropped, COUNTER, room=1500, words=100)
    assert "Did steps 0-20." in text_of(request[1])
    assert COUNTER.messages(request) <= 1500
    assert validate(request) is None


def test_summary_request_keeps_the_latest_lines_that_fit() -> None:
    dropped = _session_history(50)[1:]
    request = summary_request(dropped, COUNTER, room=800, words=100)
    text = text_of(request[1])
    assert COUNTER.messages(request) <= 800
    assert "step 49" in text and "step 0" not in text
    assert "did not fit" in text


def test_units_that_must_stay_become_handles_only_to_fit(tmp_path: Path) -> None:
    big = "x" * 30_000
    history = [user("task"), assistant(None, [_call("c1"), _call("c2")])]
    history += [tool_result("c1", big, "bash"), tool_result("c2", big, "bash")]
    out = shrink(history, COUNTER, target=200, limit=400, outputs_dir=tmp_path)
    assert [s.name for s in out.steps] == ["recent_outputs"]
    assert out.tokens <= 400
    assert all(text_of(m).startswith(HANDLE_HEAD) for m in out.history[2:])


def test_a_task_too_big_to_fit_is_kept_and_reported_over(tmp_path: Path) -> None:
    history = [user("requirement " * 3000), assistant("ok")]
    out = shrink(history, COUNTER, target=100, limit=200, outputs_dir=tmp_path)
    assert out.history[0] is history[0] and out.tokens > 200


def test_handle_of_an_already_capped_output_points_at_its_file(tmp_path: Path) -> None:
    full = "".join(f"line {i}\n" for i in range(5000))
    capped = cap(full, 4000, outputs_dir=tmp_path, call_id="c1")
    before = sorted(p.name for p in tmp_path.iterdir())
    small = handle(tool_result("c1", capped.text, "bash"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written twice
    assert f"tool-outputs/{Path(str(capped.full_path)).name}" in text_of(small)
    assert len(text_of(small)) < 700


def _call(call_id: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "bash", "arguments": json.dumps({"command": "cat big"})},
    }
