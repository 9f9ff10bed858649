"""Token counting, the budget's arithmetic and drift correction."""

from __future__ import annotations

import pytest

from nexpy.budget import (
    DEFAULT_WINDOW,
    MIN_WINDOW,
    OVERFLOW_SOURCE,
    Budget,
    TokenCounter,
)
from nexpy.messages import assistant, system, tool_result, user
from stubs.oai import estimate_prompt_tokens

# -- counting ---------------------------------------------------------------------------------


def test_counter_counts_text_calls_and_framing_like_the_stub() -> None:
    counter = TokenCounter()
    call = {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"a": 1}'}}
    messages = [
        system("You are a careful agent."),
        user("Count the lines of every file in src/ and report the biggest."),
        assistant("Let me look.", [call]),
        tool_result("c1", "src/a.py 120\nsrc/b.py 48\n" * 30, "bash"),
    ]
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
    ours = counter.messages(messages, tools)
    theirs = estimate_prompt_tokens({"messages": messages, "tools": tools})
    assert abs(ours - theirs) <= 0.05 * theirs
    # Tool calls and schemas count: dropping either makes the request smaller.
    assert counter.messages(messages) < ours
    assert counter.message(messages[2]) > counter.message(assistant("Let me look."))


def test_counter_encodes_each_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = TokenCounter()
    counter.text("warm up")  # load the encoding outside the count
    encoded: list[str] = []
    real = counter._encode_len

    def spy(text: str) -> int:
        encoded.append(text)
        return real(text)

    monkeypatch.setattr(counter, "_encode_len", spy)
    history = [user(f"message {n} " * 50) for n in range(20)]
    for _ in range(5):
        counter.messages(history)
    assert len(encoded) == 20


# -- the budget -------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "output"), [(2048, 512), (4096, 1024), (131_072, 4096)])
def test_budget_reserves_output_at_most_a_quarter_of_the_window(window: int, output: int) -> None:
    budget = Budget(window, "--context-window")
    assert budget.max_output == output
    assert budget.limit == window - output - budget.margin
    assert 64 <= budget.margin < window // 10


def test_budget_without_a_window_assumes_the_default_and_says_so() -> None:
    budget = Budget(None)
    assert (budget.window, budget.known) == (DEFAULT_WINDOW, False)
    budget.adopt(100, "a typo")
    assert budget.window == MIN_WINDOW and budget.known


def test_room_is_what_is_left_for_history_after_system_and_tools() -> None:
    budget = Budget(4096, "flag")
    assert budget.room(900) == budget.limit - 900
    assert budget.fill(900 + budget.room(900), 900) == pytest.approx(1.0)
    assert budget.room(budget.limit + 10) == 0


def test_reminder_only_under_pressure_and_names_the_window() -> None:
    budget = Budget(4096, "flag")
    fixed = 900
    room = budget.room(fixed)
    assert budget.reminder(fixed + room // 2, fixed) is None
    note = budget.reminder(fixed + room * 9 // 10, fixed)
    assert note is not None and "4096 tokens" in note and "full" in note


def test_drift_correction_converges_on_the_servers_count() -> None:
    budget = Budget(8192, "flag")
    for _ in range(10):
        budget.observe(1000, 1200)
    assert budget.estimate(1000) == pytest.approx(1200, rel=0.01)
    budget.observe(10, 1000)  # a tiny request says nothing about the tokenizer
    assert budget.estimate(1000) == pytest.approx(1200, rel=0.01)
    budget.observe(1000, 0)  # a cached prompt reported as 0 is not a reading
    assert budget.estimate(1000) == pytest.approx(1200, rel=0.01)
    for _ in range(20):
        budget.observe(1000, 50_000)
    assert budget.ratio == 4.0  # clamped: a server counting something else


def test_overflow_with_n_ctx_adopts_the_servers_window() -> None:
    budget = Budget(None)
    change = budget.overflowed(3000, 2048)
    assert budget.window == 2048 and budget.source == OVERFLOW_SOURCE
    assert "2048" in change
    assert budget.estimate(1000) == 1000  # the smaller window explains the refusal


def test_overflow_of_a_request_that_fit_by_our_count_raises_the_ratio() -> None:
    budget = Budget(4096, "the server's /props")
    sent = budget.limit  # exactly what we allowed
    budget.overflowed(sent, 4096)
    # The server saw more than 4096 - 1024 tokens in what we counted as `sent`.
    assert budget.estimate(sent) >= 4096 - 1024
    assert not budget.fits(budget.estimate(sent))


def test_overflow_without_a_figure_shrinks_an_assumed_window() -> None:
    budget = Budget(None)
    budget.overflowed(6000, None)
    assert budget.window == 4500 and budget.source == OVERFLOW_SOURCE
    known = Budget(4096, "--context-window")
    known.overflowed(2000, None)
    assert known.window == 4096 and known.ratio > 1.0
