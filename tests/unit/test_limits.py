"""The limits of a run and the one map from how a run ended to its exit code."""

from __future__ import annotations

import asyncio
import time

import pytest

from nexpy.errors import (
    AuthError,
    ContextOverflow,
    LimitReached,
    TransientError,
    UsageError,
)
from nexpy.limits import Limits, summary_prompt, turn_limit
from nexpy.outcome import outcome_of


def test_turn_limit_counts_requests_already_made() -> None:
    Limits(max_turns=3).check_turns(2)
    with pytest.raises(LimitReached) as err:
        Limits(max_turns=3).check_turns(3)
    assert err.value.reason == "max_turns" and "turn limit of 3" in err.value.line()
    Limits().check_turns(10_000)  # no limit


def test_a_cli_that_stopped_at_its_own_turn_limit_is_named() -> None:
    assert "claude hit its turn limit" in turn_limit(None, who="claude").message


async def test_deadline_counts_from_the_start_of_the_run() -> None:
    started = time.monotonic() - 0.2  # the run began 0.2 s ago: 0.1 s of 0.3 s are left
    with pytest.raises(LimitReached) as err:
        async with Limits(max_time=0.3).deadline(started):
            await asyncio.sleep(5)
    assert err.value.reason == "max_time" and "0.3 s" in err.value.message


async def test_someone_elses_timeout_passes_through_the_deadline() -> None:
    with pytest.raises(TimeoutError):
        async with Limits(max_time=60).deadline(time.monotonic()):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)


async def test_no_time_limit_runs_unbounded() -> None:
    async with Limits().deadline(time.monotonic() - 10_000):
        await asyncio.sleep(0)


def test_summary_prompt_names_the_limit() -> None:
    assert "its turn limit" in summary_prompt("max_turns")
    assert "its time limit" in summary_prompt("max_time")


@pytest.mark.parametrize(
    ("error", "status", "reason", "code"),
    [
        (None, "completed", "finished", 0),
        (LimitReached("x", reason="max_turns"), "limit", "max_turns", 3),
        (ContextOverflow("x"), "failed", "context_limit", 3),
        (AuthError("x"), "failed", "auth", 1),
        (TransientError("x"), "failed", "transient", 1),
        (UsageError("x"), "failed", "usage", 2),
        (asyncio.CancelledError(), "interrupted", "interrupted", 130),
        (KeyboardInterrupt(), "interrupted", "interrupted", 130),
        (RuntimeError("a bug"), "failed", "internal", 1),
    ],
)
def test_outcome_of_every_ending(
    error: BaseException | None, status: str, reason: str, code: int
) -> None:
    outcome = outcome_of(error)
    assert (outcome.status, outcome.exit_reason, outcome.code) == (status, reason, code)


def test_a_repl_left_by_the_person_is_a_completion() -> None:
    assert outcome_of(None, finished="user_exit").exit_reason == "user_exit"
