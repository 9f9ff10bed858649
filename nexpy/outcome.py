"""How a run ended: the one map from what ended it to the exit code and `session.ended`.

Autonomous runs, the REPL and `--json` failures before a run starts all end through `outcome_of`,
so the status, the `exit_reason` and the process's exit code never disagree between them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nexpy.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, LimitReached, NexError


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | limit | failed | interrupted
    exit_reason: str  # finished, user_exit, max_turns, context_limit, auth, … (DESIGN §5)
    code: int  # the process's exit code (DESIGN §4)


INTERRUPTED = Outcome("interrupted", "interrupted", EXIT_INTERRUPTED)


def outcome_of(error: BaseException | None, *, finished: str = "finished") -> Outcome:
    """The outcome of a run that raised `error`, or that ended normally (`finished` says how:
    the task was done, the person left the REPL)."""
    if error is None:
        return Outcome("completed", finished, EXIT_OK)
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, LimitReached):
        return Outcome("limit", error.exit_reason, error.exit_code)
    if isinstance(error, NexError):
        return Outcome("failed", error.exit_reason, error.exit_code)
    return Outcome("failed", "internal", EXIT_RUNTIME)
