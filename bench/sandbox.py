"""Section 7, sandbox: what one bash call costs under bwrap (workspace-write) over the same call
unconfined, both through nex's own `run_command` (the group kill, the pipe, the output caps), in
the same process and the same work dir, interleaved so drift hits both alike."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.harness import Figure, figure, median
from bench.settings import Context
from nexpy.sandbox import OFF, WORKSPACE_WRITE, Sandbox, probe
from nexpy.tools import ToolContext
from nexpy.tools.bash import run_command

COMMAND = "true"  # the cost of the call itself, not of the work done in it


def sandbox_cost(ctx: Context) -> list[Figure]:
    bwrap, why = probe()
    if bwrap is None:
        print(f"bench: sandbox section skipped: {why}", file=sys.stderr)
        return []
    work = ctx.scratch / "sandbox-work"
    work.mkdir(exist_ok=True)
    hidden = Sandbox(WORKSPACE_WRITE, False, bwrap).hiding(Path.home(), ctx.scratch / "state")
    tools = {
        OFF: ToolContext(workdir=work, outputs_dir=None),
        WORKSPACE_WRITE: ToolContext(workdir=work, outputs_dir=None, sandbox=hidden),
    }
    samples: dict[str, list[float]] = {OFF: [], WORKSPACE_WRITE: []}
    for i in range(ctx.settings.sandbox_reps + 1):
        for mode, tool_ctx in tools.items():
            started = time.perf_counter()
            ctx.run(run_command(COMMAND, tool_ctx, 30))
            if i:  # the first round warms the page cache
                samples[mode].append((time.perf_counter() - started) * 1000)
    confined, plain = median(samples[WORKSPACE_WRITE]), median(samples[OFF])
    return [
        figure(
            "sandbox",
            f"bash `{COMMAND}` under bwrap, workspace-write",
            confined,
            "ms",
            ("the same call unconfined", plain),
            note=f"+{confined - plain:.1f} ms a call",
        )
    ]
