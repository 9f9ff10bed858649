"""How much each section measures: the full run, and `--quick` (under a minute, run by CI)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    name: str  # "full" | "quick"
    startup_reps: int  # runs of python -c pass / nex --version / nex --help, interleaved
    pty_reps: int  # REPL prompt draws
    launch_reps: int  # --autonomous vs openai-SDK one-request runs
    turns: int  # requests in the per-turn session
    turn_reps: int  # measured repetitions of that session, per client
    stream_tokens: int
    stream_reps: int
    long_points: tuple[int, ...]  # history lengths (turns) at which a turn is measured
    long_turns: int  # turns measured at each point
    fleet: tuple[int, ...]  # concurrent autonomous sessions
    fleet_turns: int  # requests each of them makes
    fleet_latency: float  # seconds the stub takes per request
    memory_turns: int
    sandbox_reps: int  # bash calls timed with and without the sandbox, interleaved
    prefill_rounds: int  # tool rounds of the prefill sessions (the 60 in both: ~1 min)
    prefill_real: bool  # replay them on the real llama-server too (make peers)


FULL = Settings(
    name="full",
    startup_reps=20,
    pty_reps=5,
    launch_reps=3,
    turns=50,
    turn_reps=5,
    stream_tokens=20_000,
    stream_reps=3,
    long_points=(10, 100, 1000),
    long_turns=12,
    fleet=(1, 8, 32),
    fleet_turns=15,
    fleet_latency=0.2,
    memory_turns=20,
    sandbox_reps=40,
    prefill_rounds=60,
    prefill_real=True,
)

QUICK = Settings(
    name="quick",
    startup_reps=3,
    pty_reps=1,
    launch_reps=1,
    turns=10,
    turn_reps=1,
    stream_tokens=2_000,
    stream_reps=1,
    long_points=(10, 100, 1000),
    long_turns=3,
    fleet=(2,),
    fleet_turns=6,
    fleet_latency=0.2,
    memory_turns=5,
    sandbox_reps=8,
    prefill_rounds=60,
    prefill_real=False,  # the replay costs ~3 min: the full run only
)

SETTINGS = {s.name: s for s in (FULL, QUICK)}


@dataclass
class Context:
    """What a section gets: its settings, a private scratch dir, and figures other sections
    leave for it (the idle REPL's RSS is measured in the startup section)."""

    settings: Settings
    scratch: Path
    shared: dict[str, Any] = field(default_factory=dict)
    # One event loop for every in-process measurement: litellm caches its HTTP clients per
    # loop, and a fresh loop per section would time their setup again.
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    worker: Any = None  # bench.worker.Worker, started by the first in-process section

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.runner.close()
