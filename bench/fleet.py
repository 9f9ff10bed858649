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

import os
from typing import Any

from bench.harness import CpuMeter, Figure, Launched, Stub, at_least, clean_env, figure, nex_argv
from bench.settings import Context
from bench.turns import TOOL_CALLS, USAGE, prepare_workdir

TARGET_SESSIONS = 32  # the target (≥ 80% of ideal) is set for this many; --quick runs fewer


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


def concurrency(ctx: Context) -> list[Figure]:
    s = ctx.settings
    work = prepare_workdir(ctx.scratch)
    env = clean_env(ctx.scratch / "fleet")
    reply = {"tool_calls": [TOOL_CALLS[0]], "usage": USAGE, "delay": s.fleet_latency}
    figures: list[Figure] = []
    for n in s.fleet:
        script = {"replies": [{**reply, "barrier": n}] * n, "default": reply}
        with Stub(script, ctx.scratch) as stub, CpuMeter() as meter:
            procs = [
                Launched(
                    nex_argv(
                        stub.url,
                        work,
                        "--max-turns",
                        str(s.fleet_turns),
                        "--autonomous",
                        f"s{k}: read notes.txt",
                    ),
                    env,
                    work,
                )
                for k in range(n)
            ]
            results = [p.wait(timeout=900) for p in procs]
            failed = [r for r in results if r.code not in (0, 3)]  # 3: the turn limit, expected
            if failed:
                raise RuntimeError(f"nex exited {failed[0].code}: {failed[0].stderr[-600:]}")
            bodies = stub.requests()
            arrivals = stub.arrivals()
            by_session: dict[str, list[float]] = {}
            for body, at in zip(bodies, arrivals, strict=True):
                by_session.setdefault(_session_of(body), []).append(at)
            sessions = list(by_session.values())
            rate, fraction, overlapped, window = throughput(sessions, s.fleet_latency)
            busy = meter.busy(*window)
            notes = []
            if busy is not None and rate > 0:
                cpu_ms = busy * (os.cpu_count() or 1) / rate * 1e3
                notes.append(f"CPUs {busy:.0%} busy meanwhile, {cpu_ms:.0f} ms of CPU a request")
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
                    target=at_least(0.8) if n >= TARGET_SESSIONS else None,
                    note="; ".join(notes),
                    requests=len(arrivals),
                    cpu_busy=busy,
                    peak_rss_mb=max(r.max_rss_mb for r in results),
                )
            )
    return figures
