"""Section 5, concurrency: N `nex --autonomous` processes against one stub that takes a fixed
latency per request. Ideal throughput is N / latency requests per second; the figure is the
fraction of it reached while all N sessions are running turns at once.

Beside it, how busy the machine's CPUs were over that window (nex, the stub and everything
else), and what that makes per request: near 100% busy, the CPUs cannot serve more than
CPUs / (CPU a request) requests a second, whatever the runtime does.

Each session runs tool-call turns until `--max-turns`, then makes its wrap-up request. The stub
stamps each request's arrival; the session a request belongs to is read from its first user
message. Launches are staggered by litellm's import competing for the CPUs, so the stub holds
each session's first request until all N have arrived (a "barrier" reply) and releases them
together; throughput is taken over the window in which every session is between its first and
last request, each session's rate from its own requests inside that window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from bench.harness import (
    LITELLM_ENV,
    MODEL,
    PYTHON,
    CpuMeter,
    Figure,
    Launched,
    Stub,
    at_most,
    clean_env,
    figure,
    nex_argv,
)
from bench.settings import Context
from bench.turns import prepare_workdir, reading
from nexpy.tools import all_tools, schemas

# litellm is every route's provider (the project's card), so its cost is accepted: the target is
# nex's machine CPU per request against bare litellm sessions making the same requests.
CPU_TARGET = 1.2

# One bare litellm session: the same task message and tools nex sends, `turns` requests on the
# route nex takes for `local:` (hosted_vllm/), streamed, each answer's tool call answered.
LITELLM_SESSION = """\
import asyncio, json, sys
import litellm
url, model, task, turns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tools = json.loads(sys.argv[5])
async def main():
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": task},
    ]
    for _ in range(turns):
        stream = await litellm.acompletion(
            model="hosted_vllm/" + model, api_base=url, api_key="sk-bench", messages=messages,
            tools=tools, stream=True, stream_options={"include_usage": True},
            _skip_mcp_handler=True)
        calls = {}
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                new = {"id": call.id, "type": "function", "function": {"name": "", "arguments": ""}}
                entry = calls.setdefault(call.index, new)
                entry["function"]["name"] += call.function.name or ""
                entry["function"]["arguments"] += call.function.arguments or ""
        messages.append({"role": "assistant", "content": "", "tool_calls": list(calls.values())})
        for call in calls.values():
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "alpha beta"})
asyncio.run(main())
"""


def _session_of(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            return str(message.get("content", "")).split(":", 1)[0]
    return "?"


Window = tuple[float, float]


def throughput(per_session: list[list[float]], latency: float) -> tuple[float, float, bool, Window]:
    """(requests/s, fraction of ideal, whether the sessions overlapped long enough, the window).

    Rates come from each session's own consecutive requests inside the common window, so the
    window's edges cut no request in half.
    """
    n = len(per_session)
    ideal = n / latency
    start = max(a[0] for a in per_session)
    end = min(a[-1] for a in per_session)
    overlapped = end - start >= 3 * latency
    total = 0.0
    for arrivals in per_session:
        inside = [t for t in arrivals if start <= t <= end] if overlapped else arrivals
        if len(inside) >= 2:
            total += (len(inside) - 1) / (inside[-1] - inside[0])
    window = (
        (start, end)
        if overlapped
        else (min(a[0] for a in per_session), max(a[-1] for a in per_session))
    )
    return total, total / ideal, overlapped, window


def _fleet(
    ctx: Context, n: int, argv: Callable[[int, str], list[str]], env: dict[str, str], work: Any
) -> tuple[float, float, float | None, bool, int]:
    """N sessions at once: (requests/s, fraction of ideal, CPU busy, overlapped, requests)."""
    s = ctx.settings
    # Each session's first request waits for the others (barrier); then the sessions take
    # replies in turn, each a read_file call that differs from that session's previous one.
    delay = {"delay": s.fleet_latency}
    replies = [{**reading(i, n), **delay} for i in range(n * (s.fleet_turns + 2))]
    for first in replies[:n]:
        first["barrier"] = n
    script = {"replies": replies, "default": {**reading(0), **delay}}
    with Stub(script, ctx.scratch) as stub, CpuMeter() as meter:
        procs = [Launched(argv(k, stub.url), env, work) for k in range(n)]
        results = [p.wait(timeout=900) for p in procs]
        failed = [r for r in results if r.code not in (0, 3)]  # 3: the turn limit, expected
        if failed:
            raise RuntimeError(f"a session exited {failed[0].code}: {failed[0].stderr[-600:]}")
        bodies = stub.requests()
        arrivals = stub.arrivals()
    by_session: dict[str, list[float]] = {}
    for body, at in zip(bodies, arrivals, strict=True):
        by_session.setdefault(_session_of(body), []).append(at)
    rate, fraction, overlapped, window = throughput(list(by_session.values()), s.fleet_latency)
    return rate, fraction, meter.busy(*window), overlapped, len(arrivals)


def _cpu_ms(busy: float | None, rate: float) -> float | None:
    """Machine CPU (all cores, every process) per request over the measured window."""
    return None if busy is None or rate <= 0 else busy * (os.cpu_count() or 1) / rate * 1e3


def concurrency(ctx: Context) -> list[Figure]:
    s = ctx.settings
    work = prepare_workdir(ctx.scratch)
    env = clean_env(ctx.scratch / "fleet")
    lite_env = {**clean_env(ctx.scratch / "fleet-litellm"), **LITELLM_ENV}
    tools = json.dumps(schemas(all_tools(read_only=False)))
    figures: list[Figure] = []
    for n in s.fleet:

        def nex(k: int, url: str) -> list[str]:
            task = f"s{k}: read notes.txt"
            return nex_argv(url, work, "--max-turns", str(s.fleet_turns), "--autonomous", task)

        def lite(k: int, url: str) -> list[str]:
            task = f"s{k}: read notes.txt"
            return [PYTHON, "-c", LITELLM_SESSION, url, MODEL, task, str(s.fleet_turns), tools]

        rate, fraction, busy, overlapped, requests = _fleet(ctx, n, nex, env, work)
        l_rate, l_fraction, l_busy, _, _ = _fleet(ctx, n, lite, lite_env, work)
        nex_cpu, lite_cpu = _cpu_ms(busy, rate), _cpu_ms(l_busy, l_rate)
        notes = [f"bare litellm {l_rate:.0f} req/s, {l_fraction:.2f}× ideal"]
        if busy is not None:
            notes.append(f"CPUs {busy:.0%} busy meanwhile")
        if not overlapped:
            notes.append("sessions barely overlapped: whole runs used")
        figures.append(
            figure(
                "concurrency",
                f"{n} concurrent sessions, {s.fleet_latency * 1e3:.0f} ms/request",
                rate,
                "req/s",
                ("ideal", n / s.fleet_latency),
                ratio=fraction,
                note="; ".join(notes),
                requests=requests,
                cpu_busy=busy,
            )
        )
        if nex_cpu is not None and lite_cpu is not None:
            figures.append(
                figure(
                    "concurrency",
                    f"machine CPU per request, {n} sessions",
                    nex_cpu,
                    "ms",
                    ("bare litellm sessions", lite_cpu),
                    target=at_most(CPU_TARGET),
                )
            )
    return figures
