"""The stuck-loop rule (nexpy.limits.LoopGuard): a nudge on the 3rd identical call in a row, the
end of the run on the 4th, and any different call in between starts the count again."""

from __future__ import annotations

import pytest

from nexpy.errors import LimitReached
from nexpy.limits import LoopGuard, summary_prompt
from nexpy.outcome import outcome_of


def test_third_identical_call_is_nudged_fourth_ends_the_run() -> None:
    guard = LoopGuard()
    assert guard.see("bash", '{"command": "ls"}') == ""
    assert guard.see("bash", '{"command": "ls"}') == ""
    nudge = guard.see("bash", '{"command": "ls"}')
    assert "same bash call with the same arguments 3 times" in nudge and "ends the run" in nudge
    with pytest.raises(LimitReached) as e:
        guard.see("bash", '{"command": "ls"}')
    assert e.value.reason == "loop"
    outcome = outcome_of(e.value)
    assert (outcome.status, outcome.exit_reason, outcome.code) == ("limit", "loop", 3)


def test_other_arguments_or_tool_break_the_streak() -> None:
    guard = LoopGuard()
    for _ in range(2):
        assert guard.see("bash", "a") == ""
    assert guard.see("bash", "b") == ""  # other arguments: count 1
    assert guard.see("bash", "b") == ""
    assert guard.see("read_file", "b") == ""  # same arguments, other tool: count 1
    assert guard.see("bash", "b") == ""
    assert guard.see("bash", "b") == ""
    assert guard.see("bash", "b") != ""


def test_the_wrap_up_names_the_loop() -> None:
    assert "repeated-call limit" in summary_prompt("loop")
